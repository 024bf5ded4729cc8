//! Asynchronous (long-running) operations: a PUT's `Azure-AsyncOperation` status
//! (`InProgress` for a set number of polls, then `Succeeded` or `Failed`) and a
//! resource group DELETE's `Location` (202 until the group and its contents are
//! gone, then 200). `Retry-After` is sent throughout.

use std::collections::HashMap;

use serde_json::json;

use super::state::{OpKind, Operation, State};
use super::wire::{err, new_guid, now_unix, Answer, ArmErr};

impl State {
    /// Starts an operation; its id.
    pub(super) fn begin(&mut self, kind: OpKind, failure: Option<(String, String)>) -> String {
        let op = new_guid();
        self.operations.insert(
            op.clone(),
            Operation {
                kind,
                polls_left: self.lro_polls,
                failure,
                done: None,
            },
        );
        op
    }

    /// The `Azure-AsyncOperation` URL of operation `op`.
    pub(super) fn async_operation_url(
        &self,
        sub: &str,
        ns: &str,
        location: &str,
        op: &str,
        api_version: &str,
    ) -> String {
        format!(
            "{}/subscriptions/{sub}/providers/{ns}/locations/{location}/operations/{op}?api-version={api_version}",
            self.base
        )
    }

    /// The `Location` URL of operation `op`.
    pub(super) fn location_url(&self, sub: &str, op: &str, api_version: &str) -> String {
        format!(
            "{}/subscriptions/{sub}/operationresults/{op}?api-version={api_version}",
            self.base
        )
    }

    pub(super) fn poll_location(
        &mut self,
        sub: &str,
        id: &str,
        api_version: &str,
    ) -> Result<Answer, ArmErr> {
        let retry_after = self.lro_retry_after.to_string();
        let location = self.location_url(sub, id, api_version);
        let op = operation(&mut self.operations, id)?;
        if op.done.is_none() {
            if still_running(op) {
                return Ok(Answer::empty(202)
                    .header("Location", location)
                    .header("Retry-After", retry_after));
            }
            op.done = Some(Ok(()));
            if let OpKind::DeleteGroup { group_key } = op.kind.clone() {
                self.resources
                    .retain(|k, r| *k != group_key && r.group_key != group_key);
            }
        }
        Ok(Answer::empty(200))
    }

    pub(super) fn poll_async(&mut self, id: &str) -> Result<Answer, ArmErr> {
        let retry_after = self.lro_retry_after.to_string();
        let op = operation(&mut self.operations, id)?;
        if op.done.is_none() {
            if still_running(op) {
                return Ok(Answer::json(
                    200,
                    json!({"name": id, "status": "InProgress", "startTime": now_unix().to_string()}),
                )
                .header("Retry-After", retry_after));
            }
            let outcome = match op.failure.clone() {
                Some(f) => Err(f),
                None => Ok(()),
            };
            op.done = Some(outcome.clone());
            let kind = op.kind.clone();
            if let OpKind::DeleteResource { key } = &kind {
                self.finish_delete(key);
            }
            if let OpKind::Put { key } = kind {
                if let Some(r) = self.resources.get_mut(&key) {
                    r.view["properties"]["provisioningState"] = json!(if outcome.is_ok() {
                        "Succeeded"
                    } else {
                        "Failed"
                    });
                    if r.rtype == "Microsoft.Network/virtualNetworks" {
                        if let Some(subnets) = r.view["properties"]["subnets"].as_array_mut() {
                            for s in subnets {
                                s["properties"]["provisioningState"] = json!("Succeeded");
                            }
                        }
                    }
                }
            }
        }
        Ok(match op_done(&self.operations, id) {
            Some(Ok(())) => Answer::json(200, json!({"name": id, "status": "Succeeded"})),
            Some(Err((code, message))) => Answer::json(
                200,
                json!({"name": id, "status": "Failed", "error": {"code": code, "message": message}}),
            ),
            None => Answer::json(200, json!({"name": id, "status": "InProgress"})),
        })
    }
}

/// Operation `id`, or ARM's 404 for it.
fn operation<'a>(
    ops: &'a mut HashMap<String, Operation>,
    id: &str,
) -> Result<&'a mut Operation, ArmErr> {
    ops.get_mut(id).ok_or_else(|| {
        err(
            404,
            "OperationNotFound",
            format!("The operation '{id}' could not be found."),
        )
    })
}

/// Counts one poll of an operation not yet done: whether it is still running after it.
fn still_running(op: &mut Operation) -> bool {
    op.polls_left = op.polls_left.saturating_sub(1);
    op.polls_left > 0
}

fn op_done(ops: &HashMap<String, Operation>, id: &str) -> Option<Result<(), (String, String)>> {
    ops.get(id).and_then(|o| o.done.clone())
}
