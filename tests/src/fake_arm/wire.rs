//! What goes over the wire: answers, ARM's error bodies, query strings, and the ids
//! and timestamps ARM and Entra ID write.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: Option<Value>,
}

impl Answer {
    pub(super) fn json(status: u16, body: Value) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: Some(body),
        }
    }
    pub(super) fn empty(status: u16) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: None,
        }
    }
    pub(super) fn header(mut self, k: &str, v: impl Into<String>) -> Answer {
        self.headers.push((k.to_string(), v.into()));
        self
    }
}

/// An ARM error answer.
#[derive(Debug)]
pub(super) struct ArmErr {
    pub(super) status: u16,
    pub(super) code: String,
    pub(super) message: String,
    pub(super) target: Option<String>,
}

pub(super) fn err(status: u16, code: &str, message: impl Into<String>) -> ArmErr {
    ArmErr {
        status,
        code: code.to_string(),
        message: message.into(),
        target: None,
    }
}

pub(super) fn bad(code: &str, message: impl Into<String>) -> ArmErr {
    err(400, code, message)
}

/// `InvalidParameter` naming the field, as the Compute provider answers.
pub(super) fn invalid(target: &str, message: impl Into<String>) -> ArmErr {
    ArmErr {
        status: 400,
        code: "InvalidParameter".into(),
        message: message.into(),
        target: Some(target.to_string()),
    }
}

pub(super) fn missing(field: &str) -> ArmErr {
    invalid(
        field,
        format!("Required parameter '{field}' is missing (null)."),
    )
}

pub(super) fn invalid_reference(target: &str, by: &str) -> ArmErr {
    bad(
        "InvalidResourceReference",
        format!("Resource {target} referenced by resource {by} was not found. Please make sure that the referenced resource exists, and that both resources are in the same region."),
    )
}

impl ArmErr {
    pub(super) fn with_target(mut self, t: &str) -> ArmErr {
        self.target = Some(t.to_string());
        self
    }
}

impl From<ArmErr> for Answer {
    fn from(e: ArmErr) -> Answer {
        let mut error = json!({"code": e.code, "message": e.message});
        if let Some(t) = e.target {
            error["target"] = json!(t);
        }
        Answer::json(e.status, json!({ "error": error }))
    }
}

pub(super) fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn parse_body(body: &[u8]) -> Result<Value, ArmErr> {
    if body.is_empty() {
        return Err(bad(
            "InvalidRequestContent",
            "The request content was invalid and could not be deserialized: 'The request body is empty.'",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        bad(
            "InvalidRequestContent",
            format!("The request content was invalid and could not be deserialized: '{e}'."),
        )
    })
}

pub(super) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(super) fn new_guid() -> String {
    let b: [u8; 16] = rand::random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}
