//! `GET /api/v1/discovery?host=NAME`: the latest result of every collector on a host.

use serde::{Deserialize, Serialize};

/// One collector's latest result as `/api/v1/discovery` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DiscoveryView {
    pub name: String,
    pub hash: String,
    pub collected_at: u64,
    pub updated_at: u64,
    pub payload: serde_json::Value,
}
