//! The Azure provider's preflight checks (`shoal doctor --provider azure`).

use crate::providers::preflight::{check, Check, PreflightOptions, Status};

/// What the Azure provider needs: a stored credential whose certificate has not
/// expired (Azure itself checks it at the first call).
pub fn preflight(opts: &PreflightOptions) -> Vec<Check> {
    let mut checks = Vec::new();
    const FIX: &str = "shoal credential create azure NAME --tenant-id … --client-id … --subscription-id …, then upload the certificate it prints to the app registration";
    match super::credentials::list(&opts.state_dir) {
        Err(e) => checks.push(check(
            "azure-credentials",
            Status::Fail,
            e.to_string(),
            None,
        )),
        Ok(list) if list.is_empty() => checks.push(check(
            "azure-credentials",
            Status::Fail,
            format!(
                "no Azure credential stored in {}",
                opts.state_dir.join("credentials/azure").display()
            ),
            Some(FIX.into()),
        )),
        Ok(list) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            for c in list {
                let name = format!("azure:{}", c.name);
                checks.push(match (&c.azure, &c.problem) {
                    (_, Some(p)) => check(&name, Status::Fail, p.clone(), Some(format!("delete {} and create it again: {FIX}", opts.state_dir.join("credentials/azure").join(&c.name).display()))),
                    (Some(i), None) if i.not_after < now => check(
                        &name,
                        Status::Fail,
                        format!("certificate {} expired", i.thumbprint_sha1),
                        Some(format!("create a new credential: {FIX}")),
                    ),
                    (Some(i), None) => check(
                        &name,
                        Status::Ok,
                        format!(
                            "subscription {}, tenant {}, app {}, certificate {} (Azure checks it at the first call)",
                            i.subscription_id, i.tenant_id, i.client_id, i.thumbprint_sha1
                        ),
                        None,
                    ),
                    (None, None) => check(&name, Status::Warn, "unreadable", None),
                });
            }
        }
    }
    checks
}
