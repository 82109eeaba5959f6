//! Service monitoring as the API and the CLI show it: `GET /api/v1/services`
//! ([`ServiceView`], `assim services`), `GET /api/v1/checks` ([`CheckListEntry`],
//! `assim check list`), and one check as it is stored and sent to `POST /api/v1/checks`
//! ([`StoredCheck`], the JSON form of a wire `CheckSpec`), and the answer of
//! `POST /api/v1/checks/run` ([`CheckRun`], `assim check run`, the web page's "Run now").

use std::collections::BTreeMap;

use assim_wire::NodeId;
use assim_wire::msg::{CheckSpec, Tag};
use serde::{Deserialize, Serialize};

/// One check as stored (a wire `CheckSpec` in JSON-friendly form).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCheck {
    pub name: String,
    pub kind: String,
    pub argv: Vec<String>,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    pub interval_s: u64,
    pub retry_interval_s: u64,
    pub max_attempts: u32,
    pub timeout_s: u64,
}

impl StoredCheck {
    pub fn from_spec(s: &CheckSpec) -> StoredCheck {
        StoredCheck {
            name: s.name.clone(),
            kind: s.kind.clone(),
            argv: s.argv.clone(),
            params: s.params.iter().map(|t| (t.key.clone(), t.value.clone())).collect(),
            interval_s: s.interval_s,
            retry_interval_s: s.retry_interval_s,
            max_attempts: s.max_attempts,
            timeout_s: s.timeout_s,
        }
    }

    pub fn to_spec(&self) -> CheckSpec {
        CheckSpec {
            name: self.name.clone(),
            kind: self.kind.clone(),
            argv: self.argv.clone(),
            params: self
                .params
                .iter()
                .map(|(k, v)| Tag { key: k.clone(), value: v.clone() })
                .collect(),
            interval_s: self.interval_s,
            retry_interval_s: self.retry_interval_s,
            max_attempts: self.max_attempts,
            timeout_s: self.timeout_s,
        }
    }
}

/// The result of running one check now (`POST /api/v1/checks/run`): the nanoprobe's answer
/// with the host and check it was asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRun {
    pub host: String,
    pub check: String,
    /// `ok`, `warning`, `critical` or `unknown`.
    pub state: String,
    pub output: String,
    #[serde(default)]
    pub long_output: String,
    #[serde(default)]
    pub perfdata: String,
    pub duration_ms: u64,
    pub exit_code: Option<i32>,
}

/// One check of a node's desired set as `assim check list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckListEntry {
    pub host: String,
    pub node: NodeId,
    /// The epoch of the node's check set.
    pub epoch: u64,
    /// Where the check came from: `rule:NAME`, `host` (a host-level check), `config` (a
    /// `[[check]]` in a rules file) or `manual` (`assim check add`).
    pub source: String,
    #[serde(flatten)]
    pub check: StoredCheck,
}

/// One monitored service as `assim services` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    pub host: String,
    pub node: NodeId,
    pub check: String,
    pub kind: String,
    /// "ok", "warning", "critical", "unknown", or "pending" (no result reported yet).
    pub state: String,
    pub output: String,
    pub perfdata: String,
    pub flapping: bool,
    /// When the state was entered (0 while pending), µs since the epoch.
    pub since: u64,
    pub interval_s: u64,
}
