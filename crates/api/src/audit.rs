//! The security audit under `/api/v1/audit…` (issue 19): results per rule per host, and scores
//! per host, rule and category (0–100, severity-weighted; see `assim-audit`).

use serde::{Deserialize, Serialize};

/// A host's audit summary (`assim audit`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHost {
    pub host: String,
    pub node: String,
    pub score: u32,
    pub passed: u32,
    pub failed: u32,
    pub not_applicable: u32,
    /// The ids of the rules it fails, most severe first.
    pub failing: Vec<String>,
}

/// A score over some results: a rule's over every host, or a category's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditScore {
    /// The rule id or the category.
    pub name: String,
    pub score: u32,
    pub passed: u32,
    pub failed: u32,
    pub not_applicable: u32,
}

/// `GET /api/v1/audit`: hosts worst first, then the scores per category and per rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditSummary {
    pub hosts: Vec<AuditHost>,
    pub categories: Vec<AuditScore>,
    pub rules: Vec<AuditScore>,
}

/// One rule as configured (`assim audit rules`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRuleInfo {
    pub id: String,
    pub category: String,
    pub severity: String,
    pub reference: String,
    pub reason: String,
}

/// One rule's result on one host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditResult {
    pub rule: AuditRuleInfo,
    pub host: String,
    pub node: String,
    /// `pass`, `fail` or `n/a`.
    pub result: String,
    /// What was found, or why the rule does not apply.
    pub detail: String,
}
