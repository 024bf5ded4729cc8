//! The AWS provider's preflight checks (`shoal doctor --provider aws`).

use super::credentials::{resolve, Env};
use crate::providers::preflight::{check, Check, PreflightOptions, Status};
use crate::providers::ProviderParams;

/// Masks an access key id: `AKIA…WXYZ`.
pub fn mask_key_id(id: &str) -> String {
    let chars: Vec<char> = id.chars().collect();
    if chars.len() <= 8 {
        return "****".into();
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

/// What the AWS provider needs: credentials (found as `shoal serve` would find them)
/// and a region.
pub fn preflight(opts: &PreflightOptions) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut params = ProviderParams {
        region: Some(opts.region.clone().unwrap_or_else(|| "us-east-1".into())),
        ..ProviderParams::default()
    };
    if let Some(p) = &opts.profile {
        params.extra.insert("profile".into(), p.clone());
    }
    checks.push(match resolve(&Env::Process, &params) {
        Ok(s) => check(
            "aws-credentials",
            Status::Ok,
            format!(
                "access key {} from {}",
                mask_key_id(s.credentials.access_key_id()),
                s.credentials.source()
            ),
            None,
        ),
        Err(e) => check(
            "aws-credentials",
            Status::Fail,
            e.to_string(),
            Some("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with a profile in ~/.aws/credentials (static keys; `aws configure export-credentials` turns SSO and role profiles into keys)".into()),
        ),
    });
    // The region as `cluster create` would find it without --region.
    params.region = opts.region.clone();
    checks.push(match resolve(&Env::Process, &params) {
        Ok(s) => check(
            "aws-region",
            Status::Ok,
            format!("{} (EC2 endpoint {})", s.region, s.endpoint),
            None,
        ),
        Err(e) if e.to_string().contains("no AWS region") => check(
            "aws-region",
            Status::Warn,
            "no default region",
            Some("give --region to `shoal cluster create`, or set AWS_REGION".into()),
        ),
        // A credentials problem is reported above.
        Err(_) => check("aws-region", Status::Warn, "not resolved (see above)", None),
    });
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_masked() {
        assert_eq!(mask_key_id("AKIAIOSFODNN7EXAMPLE"), "AKIA…MPLE");
        assert_eq!(mask_key_id("short"), "****");
    }
}
