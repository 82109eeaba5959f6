//! The durable subscriptions of the event bus (`/api/v1/subscriptions/…`).

use serde::{Deserialize, Serialize};

use crate::Event;

/// A subscription as the API shows it (a sink's secret reads `(set)`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SubscriptionView {
    pub name: String,
    pub filter: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<serde_json::Value>,
    pub cursor: u64,
    pub created_at: u64,
    pub updated_at: u64,
}

/// The answer of `GET /api/v1/subscriptions/NAME/events`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SubscriptionBatch {
    /// The stored cursor (the last acknowledged event).
    pub cursor: u64,
    /// The last event examined: acknowledge this after handling `events`.
    pub through: u64,
    pub events: Vec<Event>,
}

/// Body of `POST /api/v1/subscriptions/NAME/ack`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    pub through: u64,
}
