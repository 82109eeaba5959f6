//! One message limit end to end (issue 16 item 2).
//!
//! The spool's record limit, the reliable layer's message limit and the CMA's inbox all take
//! [`MAX_MESSAGE`] bytes of encoded message. A message over it is never spooled and never
//! queued: [`fit`] replaces it at the source with an error result of the same kind (a discovery
//! result `{"error": …}`, a check result in state UNKNOWN, a failed command result), so the
//! CMA learns that something was refused and the spool can never hold a record that cannot be
//! sent. Spools written by older versions may still hold such a record: it is resent through
//! [`fit`] too, under its old record number, so it cannot wedge the CMA's next-record rule.

use assim_wire::msg::{Body, Message};
use prost::Message as _;

/// The largest encoded message (spool record, reliable message): 2 MiB.
pub const MAX_MESSAGE: usize = assim_wire::limits::MAX_MESSAGE_SIZE;

/// Room left for the envelope when a body is replaced by its error form.
const SLACK: usize = 1024;

fn refusal(kind: &str, len: usize, max: usize) -> String {
    format!(
        "{kind} of {len} bytes exceeds the {max}-byte message limit and was not sent; \
         narrow it (collector parameters, check output) so that it fits"
    )
}

/// `message` if it fits in `max` bytes, else its error form (which always fits). Returns the
/// encoded message and whether it was replaced.
pub fn fit(message: Message, max: usize) -> (Vec<u8>, bool) {
    let bytes = message.to_bytes();
    if bytes.len() <= max {
        return (bytes, false);
    }
    let len = bytes.len();
    let record = message.record;
    let body = message.body.map(|b| refuse(b, len, max));
    let mut bytes = Message { record, body }.to_bytes();
    if bytes.len() > max {
        // A kind with unbounded fields we do not know how to shrink: an empty message of the
        // same record keeps the record sequence dense.
        bytes = Message { record, body: None }.to_bytes();
    }
    (bytes, true)
}

/// `body` if a message carrying it (under any record number) fits in `max` bytes, else its
/// error form (`None` if even that does not fit). Returns whether it was replaced.
pub fn fit_body(body: Body, max: usize) -> (Option<Body>, bool) {
    let m = Message { record: u64::MAX, body: Some(body) };
    let len = m.encoded_len();
    if len <= max {
        return (m.body, false);
    }
    let body = m.body.map(|b| refuse(b, len, max));
    let fits = Message { record: u64::MAX, body: body.clone() }.encoded_len() <= max;
    (body.filter(|_| fits), true)
}

/// The error form of an oversized body.
fn refuse(body: Body, len: usize, max: usize) -> Body {
    let clip = |s: String| {
        if s.len() <= SLACK {
            s
        } else {
            let mut end = SLACK;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s[..end].to_owned()
        }
    };
    match body {
        Body::DiscoveryResult(mut d) => {
            let error = refusal(&format!("discovery result {:?}", d.name), len, max);
            d.payload = serde_json::to_vec(
                &serde_json::json!({ "error": error, "exit": null, "bytes": len }),
            )
            .unwrap_or_default();
            d.content_hash.clear();
            d.delta = false;
            d.name = clip(d.name);
            Body::DiscoveryResult(d)
        }
        Body::CheckStateChange(mut c) => {
            c.output = refusal(&format!("check result {:?}", c.check), len, max);
            c.check = clip(c.check);
            c.state = assim_wire::msg::CheckState::Unknown as i32;
            c.perfdata.clear();
            Body::CheckStateChange(c)
        }
        Body::CommandResult(mut r) => {
            r.ok = false;
            r.error = refusal("command result", len, max);
            r.payload.clear();
            Body::CommandResult(r)
        }
        Body::LocalEvent(mut e) => {
            e.text = refusal(&format!("local event {:?}", e.event_type), len, max);
            e.event_type = clip(e.event_type);
            e.severity = clip(e.severity);
            e.tags.clear();
            Body::LocalEvent(e)
        }
        other => other,
    }
}
