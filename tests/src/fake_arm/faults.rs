//! Faults on demand: the next N matching requests answered 429 (with `Retry-After`)
//! or 5xx, and VM deployments that end `Failed` with a chosen code.

use axum::http::Method;
use serde_json::json;

use super::state::{Fault, FaultKind, State};
use super::wire::Answer;

impl State {
    /// Answers the next `times` requests whose method is `method` and whose path
    /// contains `path_contains` (case-insensitive) as `kind` says.
    pub(super) fn add_fault(
        &mut self,
        method: &str,
        path_contains: &str,
        times: u32,
        kind: FaultKind,
    ) {
        self.faults.push(Fault {
            method: method.to_ascii_uppercase(),
            path_contains: path_contains.to_ascii_lowercase(),
            remaining: times,
            kind,
        });
    }

    /// The scripted answer to this request, if a fault matches (and counts it).
    pub(super) fn fault(&mut self, method: &Method, path: &str) -> Option<Answer> {
        let lpath = path.to_ascii_lowercase();
        let f = self.faults.iter_mut().find(|f| {
            f.remaining > 0 && f.method == method.as_str() && lpath.contains(&f.path_contains)
        })?;
        f.remaining -= 1;
        Some(match f.kind {
            FaultKind::Throttle { retry_after } => Answer::json(
                429,
                json!({"error": {"code": "TooManyRequests", "message": "The request is being throttled as the limit has been reached for operation type - Write_ObservationWindow_00:01:00. For more information, see - https://aka.ms/srpthrottlinglimits"}}),
            )
            .header("Retry-After", retry_after.to_string()),
            FaultKind::Status { status } => Answer::json(
                status,
                json!({"error": {"code": "InternalServerError", "message": "Encountered internal server error. Diagnostic information: timestamp '…', subscription id '…'."}}),
            ),
        })
    }

    /// Makes the deployment of VM `vm_name` end `Failed` with `code` and `message`.
    pub(super) fn fail_vm(&mut self, vm_name: &str, code: &str, message: &str) {
        self.vm_failures.insert(
            vm_name.to_ascii_lowercase(),
            (code.to_string(), message.to_string()),
        );
    }

    /// How the deployment of VM `vm_name` is to fail, if it is.
    pub(super) fn vm_failure(&self, vm_name: &str) -> Option<(String, String)> {
        self.vm_failures.get(&vm_name.to_ascii_lowercase()).cloned()
    }
}
