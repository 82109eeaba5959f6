//! Audit events (issue 19): the CMA judges each host's `security` discovery document with the
//! audit rules (`assim-audit`) whenever the document changes, and raises one event per rule
//! whose result on that host changed:
//!
//! | before → after | event | severity |
//! |---|---|---|
//! | pass or n/a → fail | `audit.failed` | the rule's severity |
//! | fail → pass | `audit.passed` | info |
//! | fail → n/a (the setting is gone) | `audit.passed` | info |
//! | the first document of a host | none (its results are the baseline) | |
//! | anything else | none | |
//!
//! Each event names the rule, the host, what was found, the reason and the reference, and
//! carries the host's new score. [`AuditWatch`] is the memory: each node's verdicts, restored
//! from the stored documents at start (so a CMA restart neither forgets nor re-announces).
//! O(rules) per document.

use std::collections::BTreeMap;

use assim_audit::{Outcome, RuleSet, Tally};
use assim_discovery::security::Security;
use assim_wire::{NodeId, Timestamp};

use crate::Cma;
use crate::model::{EventKind, Severity};

/// The collector whose documents are judged.
pub const COLLECTOR: &str = assim_discovery::security::NAME;

/// One verdict that changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditChange {
    pub rule: String,
    pub before: &'static str,
    pub outcome: Outcome,
}

/// The remembered verdicts. See the module doc.
#[derive(Clone, Debug, Default)]
pub struct AuditWatch {
    rules: RuleSet,
    by_node: BTreeMap<NodeId, BTreeMap<String, &'static str>>,
}

/// A `security` document, if the payload has the collector's shape.
pub fn document(payload: &[u8]) -> Option<Security> {
    serde_json::from_slice(payload).ok()
}

impl AuditWatch {
    /// The memory, judged by `rules`, restored from each node's stored document.
    pub fn new(rules: RuleSet, stored: impl IntoIterator<Item = (NodeId, Security)>) -> AuditWatch {
        let mut w = AuditWatch { rules, by_node: BTreeMap::new() };
        for (node, doc) in stored {
            let verdicts = w.verdicts(&doc).0;
            w.by_node.insert(node, verdicts);
        }
        w
    }

    fn verdicts(
        &self,
        doc: &Security,
    ) -> (BTreeMap<String, &'static str>, Vec<(String, Outcome)>, Tally) {
        let mut words = BTreeMap::new();
        let mut all = Vec::new();
        let mut tally = Tally::default();
        for (rule, outcome) in self.rules.evaluate(doc) {
            tally.add(rule.severity, &outcome);
            words.insert(rule.id.clone(), outcome.word());
            all.push((rule.id.clone(), outcome));
        }
        (words, all, tally)
    }

    /// Judges a new document of `node`: the changed verdicts (none for its first document) and
    /// its score.
    pub fn observe(&mut self, node: NodeId, doc: &Security) -> (Vec<AuditChange>, u32) {
        let (words, all, tally) = self.verdicts(doc);
        let previous = self.by_node.insert(node, words);
        let Some(previous) = previous else { return (Vec::new(), tally.score()) };
        let changes = all
            .into_iter()
            .filter_map(|(rule, outcome)| {
                let before = previous.get(&rule).copied().unwrap_or("n/a");
                let after = outcome.word();
                let raise =
                    (after == "fail" && before != "fail") || (before == "fail" && after != "fail");
                raise.then_some(AuditChange { rule, before, outcome })
            })
            .collect();
        (changes, tally.score())
    }

    /// The rules in force.
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }
}

impl Cma {
    /// Emits one `audit.failed` or `audit.passed` about `node` for `change`.
    pub(crate) fn audit_changed(
        &mut self,
        now: Timestamp,
        node: NodeId,
        change: &AuditChange,
        score: u32,
        rules: &RuleSet,
    ) {
        let Some(rule) = rules.rule(&change.rule) else { return };
        let name = self.node(node).map(|n| n.display_name()).unwrap_or_else(|| node.to_string());
        let failed = change.outcome.word() == "fail";
        let (kind, text) = if failed {
            (
                EventKind::AuditFailed,
                format!(
                    "{name} fails audit rule {}: {}. {}",
                    rule.id,
                    change.outcome.detail(),
                    rule.reason
                ),
            )
        } else {
            (
                EventKind::AuditPassed,
                format!("{name} passes audit rule {} again: {}", rule.id, change.outcome.detail()),
            )
        };
        let tags = vec![
            ("rule", rule.id.clone()),
            ("category", rule.category.clone()),
            ("score", score.to_string()),
        ];
        let body = serde_json::json!({
            "rule": rule.id,
            "category": rule.category,
            "rule_severity": rule.severity.name(),
            "result": change.outcome.word(),
            "before": change.before,
            "detail": change.outcome.detail(),
            "reason": rule.reason,
            "reference": rule.reference,
            "score": score,
        });
        let e = self.event(now, kind, Some(node), tags, text);
        if failed {
            e.severity = match rule.severity {
                assim_audit::RuleSeverity::Info => Severity::Info,
                assim_audit::RuleSeverity::Notice => Severity::Notice,
                assim_audit::RuleSeverity::Warning => Severity::Warning,
                assim_audit::RuleSeverity::Error => Severity::Error,
                assim_audit::RuleSeverity::Critical => Severity::Critical,
            };
        }
        e.body = Some(body);
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(root_login: &str) -> Security {
        let mut s = Security { sshd_source: "sshd -T".into(), ..Security::default() };
        s.sshd.insert("permitrootlogin".into(), root_login.into());
        s.sshd.insert("x11forwarding".into(), "no".into());
        s
    }

    #[test]
    fn the_first_document_is_the_baseline_then_each_change_is_one() {
        let node = NodeId::from_slice(&[1; 16]).unwrap();
        let mut w = AuditWatch::new(RuleSet::defaults(), []);
        let (first, s0) = w.observe(node, &doc("yes"));
        assert!(first.is_empty());
        let (same, _) = w.observe(node, &doc("yes"));
        assert!(same.is_empty());
        let (fixed, s1) = w.observe(node, &doc("no"));
        assert_eq!(fixed.len(), 1, "{fixed:?}");
        assert_eq!(
            (fixed[0].rule.as_str(), fixed[0].before, fixed[0].outcome.word()),
            ("ssh.root-login", "fail", "pass")
        );
        assert!(s1 > s0);
        let (broke, _) = w.observe(node, &doc("yes"));
        assert_eq!(broke.len(), 1);
        assert_eq!(broke[0].outcome.word(), "fail");
    }

    #[test]
    fn a_restart_restores_the_verdicts() {
        let node = NodeId::from_slice(&[1; 16]).unwrap();
        let mut w = AuditWatch::new(RuleSet::defaults(), [(node, doc("yes"))]);
        assert!(w.observe(node, &doc("yes")).0.is_empty());
        assert_eq!(w.observe(node, &doc("no")).0.len(), 1);
    }
}
