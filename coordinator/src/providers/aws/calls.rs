//! EC2 calls the provider composes from the Query client: reading the id out of a
//! create call's answer, listing ids, and calls for which "already so" is success.

use super::ec2::{child_text, find, items, parse, AwsError, Params, QueryClient};

/// The value of the first `name` element in a create call's answer.
pub(super) fn id_in(
    client: &QueryClient,
    operation: &str,
    body: &str,
    name: &str,
) -> Result<String, AwsError> {
    let doc = parse(operation, client.endpoint(), body)?;
    find(doc.root_element(), name)
        .and_then(|n| n.text())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| AwsError::BadResponse {
            operation: operation.to_string(),
            endpoint: client.endpoint().to_string(),
            status: 200,
            message: format!("no <{name}> in the answer"),
        })
}

/// `(id, extra field)` of each item of a Describe call's list.
pub(super) async fn describe_ids(
    client: &QueryClient,
    action: &str,
    set: &str,
    id_field: &str,
    other_field: &str,
    params: &Params,
) -> Result<Vec<(String, Option<String>)>, AwsError> {
    let body = client.call_once(action, params).await?;
    let doc = parse(action, client.endpoint(), &body)?;
    Ok(items(doc.root_element(), set)
        .into_iter()
        .filter_map(|i| {
            Some((
                child_text(i, id_field)?.to_string(),
                child_text(i, other_field).map(str::to_string),
            ))
        })
        .collect())
}

/// Calls `action` and counts the listed "already so" codes as success.
pub(super) async fn call_tolerating(
    client: &QueryClient,
    action: &str,
    params: &Params,
    ok_codes: &[&str],
) -> Result<(), AwsError> {
    match client.call(action, params).await {
        Ok(_) => Ok(()),
        Err(e) if e.code().is_some_and(|c| ok_codes.contains(&c)) => {
            tracing::debug!(%action, code = e.code().unwrap_or_default(), "already done");
            Ok(())
        }
        Err(e) => Err(e),
    }
}
