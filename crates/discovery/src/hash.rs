//! Content hash: SHA-256 over canonical JSON (object keys sorted at every
//! level, no whitespace), so equal content gives equal hashes whatever the
//! field or map order, and the nanoprobe sends a result only when it changed.

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Canonical JSON bytes of `value`: keys sorted recursively, compact form.
pub fn canonical_json(value: &impl Serialize) -> Result<Vec<u8>, serde_json::Error> {
    let value = serde_json::to_value(value)?;
    let mut out = Vec::new();
    write_canonical(&value, &mut out)?;
    Ok(out)
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key)?;
                out.push(b':');
                write_canonical(&map[key], out)?;
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out)?;
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar)?,
    }
    Ok(())
}

/// SHA-256 of the canonical JSON of `value`, or the serialisation error.
pub fn try_content_hash(value: &impl Serialize) -> Result<[u8; 32], serde_json::Error> {
    Ok(Sha256::digest(canonical_json(value)?).into())
}

/// SHA-256 of the canonical JSON of `value`.
///
/// Every result type of this crate serialises infallibly (string map keys
/// only). For a foreign type whose `Serialize` fails, the hash is taken over
/// the error text instead, so it is still deterministic; use
/// [`try_content_hash`] to see the error.
pub fn content_hash(value: &impl Serialize) -> [u8; 32] {
    match try_content_hash(value) {
        Ok(hash) => hash,
        Err(e) => Sha256::digest(format!("unserialisable: {e}")).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn key_order_does_not_matter() {
        let a = serde_json::json!({"b": 1, "a": {"y": [1, 2], "x": "s"}});
        let mut m = HashMap::new();
        m.insert("a", serde_json::json!({"x": "s", "y": [1, 2]}));
        m.insert("b", serde_json::json!(1));
        assert_eq!(content_hash(&a), content_hash(&m));
        assert_eq!(canonical_json(&a).unwrap(), br#"{"a":{"x":"s","y":[1,2]},"b":1}"#);
    }

    #[test]
    fn content_change_changes_hash() {
        let a = serde_json::json!({"a": 1});
        let b = serde_json::json!({"a": 2});
        assert_ne!(content_hash(&a), content_hash(&b));
    }
}
