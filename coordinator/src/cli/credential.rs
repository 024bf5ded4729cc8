//! `shoal credential …`: cloud credentials kept in the state directory (no coordinator
//! needed).

use std::path::Path;

use super::error::{exit, to_json, CliError};
use super::{CredentialCommand, CredentialCreate};
use crate::providers::azure::credentials::{self, CredentialError};

/// What the operator typed wrong is a usage error; the rest is local.
fn credential_error(e: CredentialError) -> CliError {
    match e {
        CredentialError::InvalidName { .. } | CredentialError::InvalidId { .. } => {
            CliError::Usage(e.to_string())
        }
        other => CliError::Local(other.to_string()),
    }
}

/// Runs a credential command (local to the state directory; no server needed).
pub async fn run(state_dir: &Path, cmd: &CredentialCommand) -> Result<u8, CliError> {
    match cmd {
        CredentialCommand::Create(CredentialCreate::Azure {
            name,
            tenant_id,
            client_id,
            subscription_id,
        }) => {
            let (dir, name, tenant, client, sub) = (
                state_dir.to_path_buf(),
                name.clone(),
                tenant_id.clone(),
                client_id.clone(),
                subscription_id.clone(),
            );
            // RSA key generation is CPU work: keep it off the async workers.
            let cred = tokio::task::spawn_blocking(move || {
                credentials::create_azure(&dir, &name, &tenant, &client, &sub)
            })
            .await
            .map_err(|e| CliError::Local(format!("generating the key pair: {e}")))?
            .map_err(credential_error)?;
            println!("{}", cred.instructions());
            Ok(exit::OK)
        }
        CredentialCommand::List { json } => {
            let list = credentials::list(state_dir).map_err(credential_error)?;
            if *json {
                println!("{}", to_json(&list)?);
            } else {
                println!("{:<8} {:<24} STATUS", "PROVIDER", "NAME");
                for c in &list {
                    println!(
                        "{:<8} {:<24} {}",
                        c.provider,
                        c.name,
                        c.problem.as_deref().unwrap_or("ok")
                    );
                }
            }
            Ok(exit::OK)
        }
    }
}
