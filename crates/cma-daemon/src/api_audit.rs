//! The security audit routes (issue 19), behind the same guard as every route. The rules
//! (shipped, plus `--audit-rules`, without `--audit-silence`) judge each host's latest
//! `security` discovery document at query time, as the CMA's core does when a document arrives
//! (`assim_cma::audit_watch`, which raises `audit.failed` / `audit.passed`):
//!
//! - `GET /api/v1/audit`: hosts worst score first, the scores per category and per rule
//!   (`assim audit`).
//! - `GET /api/v1/audit/hosts/HOST`: every rule's result on one host, failures first, most
//!   severe first (`assim audit HOST`).
//! - `GET /api/v1/audit/rules`: the rules in force (`assim audit rules`).
//! - `GET /api/v1/audit/rules/ID`: one rule's result on every host, failures first
//!   (`assim audit rule ID`).

use std::collections::BTreeMap;

use assim_api::{AuditHost, AuditResult, AuditRuleInfo, AuditScore, AuditSummary};
use assim_audit::{Outcome, Rule, RuleSet, RuleSeverity, Tally};
use assim_store::{Queries, QueryError};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::api::ApiState;

/// The audit routes (merged into the protected part of [`crate::api::router`]).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/audit", get(summary))
        .route("/api/v1/audit/hosts/{host}", get(host))
        .route("/api/v1/audit/rules", get(rules))
        .route("/api/v1/audit/rules/{id}", get(rule))
}

fn info(r: &Rule) -> AuditRuleInfo {
    AuditRuleInfo {
        id: r.id.clone(),
        category: r.category.clone(),
        severity: r.severity.name().into(),
        reference: r.reference.clone(),
        reason: r.reason.clone(),
    }
}

/// Every rule's result on every host with a `security` document (or on `only` node).
fn judge(
    q: &dyn Queries,
    rules: &RuleSet,
    only: Option<&str>,
) -> Result<Vec<(AuditResult, RuleSeverity)>, QueryError> {
    let names: BTreeMap<String, String> =
        q.nodes()?.into_iter().map(|n| (n.id.to_string(), n.hostname)).collect();
    let mut out = Vec::new();
    for (node, doc) in q.latest_discovery(&[assim_discovery::security::NAME])? {
        if only.is_some_and(|o| o != node) {
            continue;
        }
        let Ok(doc) = serde_json::from_value::<assim_discovery::security::Security>(doc.payload)
        else {
            continue;
        };
        let host = names.get(&node).cloned().unwrap_or_else(|| node.clone());
        for (rule, outcome) in rules.evaluate(&doc) {
            out.push((
                AuditResult {
                    rule: info(rule),
                    host: host.clone(),
                    node: node.clone(),
                    result: outcome.word().into(),
                    detail: outcome.detail().into(),
                },
                rule.severity,
            ));
        }
    }
    Ok(out)
}

fn outcome(r: &AuditResult) -> Outcome {
    match r.result.as_str() {
        "pass" => Outcome::Pass(String::new()),
        "fail" => Outcome::Fail(String::new()),
        _ => Outcome::NotApplicable(String::new()),
    }
}

fn score(name: String, t: &Tally) -> AuditScore {
    AuditScore {
        name,
        score: t.score(),
        passed: t.passed,
        failed: t.failed,
        not_applicable: t.not_applicable,
    }
}

/// Failures first, most severe first, then by rule id and host.
fn sort_results(rows: &mut [(AuditResult, RuleSeverity)]) {
    let rank = |r: &AuditResult| match r.result.as_str() {
        "fail" => 0,
        "pass" => 1,
        _ => 2,
    };
    rows.sort_by(|(a, sa), (b, sb)| {
        (rank(a), std::cmp::Reverse(*sa), &a.rule.id, &a.host).cmp(&(
            rank(b),
            std::cmp::Reverse(*sb),
            &b.rule.id,
            &b.host,
        ))
    });
}

/// A host's tally and the (severity, id) of the rules it fails.
type HostTally = (Tally, Vec<(RuleSeverity, String)>);

/// The summary of [`judge`]'s rows.
pub fn summarize(rows: &[(AuditResult, RuleSeverity)]) -> AuditSummary {
    let mut hosts: BTreeMap<(String, String), HostTally> = BTreeMap::new();
    let mut categories: BTreeMap<String, Tally> = BTreeMap::new();
    let mut rules: BTreeMap<String, Tally> = BTreeMap::new();
    for (r, sev) in rows {
        let o = outcome(r);
        let h = hosts.entry((r.host.clone(), r.node.clone())).or_default();
        h.0.add(*sev, &o);
        if r.result == "fail" {
            h.1.push((*sev, r.rule.id.clone()));
        }
        categories.entry(r.rule.category.clone()).or_default().add(*sev, &o);
        rules.entry(r.rule.id.clone()).or_default().add(*sev, &o);
    }
    let mut hosts: Vec<AuditHost> = hosts
        .into_iter()
        .map(|((host, node), (t, mut failing))| {
            failing.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            AuditHost {
                host,
                node,
                score: t.score(),
                passed: t.passed,
                failed: t.failed,
                not_applicable: t.not_applicable,
                failing: failing.into_iter().map(|(_, id)| id).collect(),
            }
        })
        .collect();
    hosts.sort_by(|a, b| (a.score, &a.host).cmp(&(b.score, &b.host)));
    let mut categories: Vec<AuditScore> =
        categories.into_iter().map(|(n, t)| score(n, &t)).collect();
    categories.sort_by(|a, b| (a.score, &a.name).cmp(&(b.score, &b.name)));
    let mut rules: Vec<AuditScore> = rules.into_iter().map(|(n, t)| score(n, &t)).collect();
    rules.sort_by(|a, b| (a.score, &a.name).cmp(&(b.score, &b.name)));
    AuditSummary { hosts, categories, rules }
}

async fn summary(State(state): State<ApiState>) -> Response {
    let rules = state.audit.clone();
    match state.read(move |q| Ok(summarize(&judge(q, &rules, None)?))).await {
        Ok(s) => Json(s).into_response(),
        Err(e) => crate::api_limits::failed(e),
    }
}

async fn host(State(state): State<ApiState>, Path(host): Path<String>) -> Response {
    let rules = state.audit.clone();
    let read = state
        .read(move |q| {
            let Some(node) = q.resolve_host(&host)? else {
                return Ok(crate::api_topology::unknown_host(&host));
            };
            let mut rows = judge(q, &rules, Some(&node.node))?;
            if rows.is_empty() {
                return Ok((
                    StatusCode::NOT_FOUND,
                    format!("{host} has reported no `security` discovery yet (its nanoprobe runs the collector hourly by default)\n"),
                )
                    .into_response());
            }
            sort_results(&mut rows);
            Ok(Json(rows.into_iter().map(|(r, _)| r).collect::<Vec<_>>()).into_response())
        })
        .await;
    read.unwrap_or_else(crate::api_limits::failed)
}

async fn rules(State(state): State<ApiState>) -> Response {
    Json(state.audit.rules().iter().map(info).collect::<Vec<_>>()).into_response()
}

async fn rule(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    if state.audit.rule(&id).is_none() {
        return (
            StatusCode::NOT_FOUND,
            format!("no audit rule {id:?} (silenced or unknown); `assim audit rules` lists them\n"),
        )
            .into_response();
    }
    let rules = state.audit.clone();
    let read = state
        .read(move |q| {
            let mut rows: Vec<_> =
                judge(q, &rules, None)?.into_iter().filter(|(r, _)| r.rule.id == id).collect();
            sort_results(&mut rows);
            Ok(rows.into_iter().map(|(r, _)| r).collect::<Vec<_>>())
        })
        .await;
    crate::api_topology::answer(read)
}
