//! Tagging rules: the CMA adds tags to events that match configured patterns before it stores
//! them (e.g. text matching `RAID` adds `subsystem=storage`).
//!
//! ```toml
//! [[bus.tag_rules]]
//! text = "RAID|raid"          # regex on the text (optional)
//! type = "local.*"            # glob on the event type (optional)
//! host = "db*"                # glob on the host name (optional)
//! filter = "severity>=error"  # any filter expression (optional)
//! add = { subsystem = "storage", team = "dba" }
//! ```
//!
//! Every condition given must hold; a rule without conditions applies to every event. Rules run
//! in order; a rule never replaces a tag the event already has (the producer's tags, and tags
//! of earlier rules, win), so `host` and `node` cannot be forged by a rule.

use std::collections::BTreeMap;

use assim_cma::Event;
use serde::{Deserialize, Serialize};

use crate::filter::{Filter, FilterError, TextRegex};
use assim_util::Glob;

/// One rule as written in the config file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TagRuleConfig {
    pub text: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub host: Option<String>,
    pub filter: Option<String>,
    pub add: BTreeMap<String, String>,
}

/// Why a rule was refused (at CMA start-up, with the rule's position).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagRuleError {
    #[error("tag rule {index}: the text regex {text:?} is not valid: {detail}")]
    BadRegex { index: usize, text: String, detail: String },
    #[error("tag rule {index}: the filter is not valid: {source}")]
    BadFilter {
        index: usize,
        #[source]
        source: FilterError,
    },
    #[error("tag rule {index}: `add` is empty; say which tags the rule adds")]
    NothingToAdd { index: usize },
    #[error(
        "tag rule {index}: tag name {key:?} is not valid (letters, digits, _ . - ; at most 64)"
    )]
    BadKey { index: usize, key: String },
}

/// A compiled rule.
#[derive(Clone, Debug)]
pub struct TagRule {
    text: Option<TextRegex>,
    kind: Option<Glob>,
    host: Option<Glob>,
    filter: Option<Filter>,
    add: BTreeMap<String, String>,
}

/// Whether `k` is a valid tag name: 1–64 of `[A-Za-z0-9_.-]`.
pub fn valid_tag_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 64
        && k.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

impl TagRule {
    /// Compiles rule number `index` (1-based, for messages).
    pub fn compile(index: usize, c: &TagRuleConfig) -> Result<TagRule, TagRuleError> {
        if c.add.is_empty() {
            return Err(TagRuleError::NothingToAdd { index });
        }
        if let Some(k) = c.add.keys().find(|k| !valid_tag_key(k)) {
            return Err(TagRuleError::BadKey { index, key: k.clone() });
        }
        let text = match &c.text {
            Some(t) => Some(TextRegex::new(t, false).map_err(|e| TagRuleError::BadRegex {
                index,
                text: t.clone(),
                detail: e.to_string(),
            })?),
            None => None,
        };
        let filter = match &c.filter {
            Some(f) => {
                Some(Filter::parse(f).map_err(|source| TagRuleError::BadFilter { index, source })?)
            }
            None => None,
        };
        Ok(TagRule {
            text,
            kind: c.kind.as_deref().map(Glob::new),
            host: c.host.as_deref().map(Glob::new),
            filter,
            add: c.add.clone(),
        })
    }

    /// Whether the rule's conditions hold for `e`.
    pub fn matches(&self, e: &Event) -> bool {
        self.text.as_ref().is_none_or(|t| t.regex.is_match(&e.text))
            && self.kind.as_ref().is_none_or(|g| g.matches(e.kind.name()))
            && self.host.as_ref().is_none_or(|g| g.matches(&e.hostname))
            && self.filter.as_ref().is_none_or(|f| f.matches(e))
    }
}

/// The rules of one CMA, in order.
#[derive(Clone, Debug, Default)]
pub struct Tagger {
    rules: Vec<TagRule>,
}

impl Tagger {
    /// Compiles every rule; the first bad one is the error.
    pub fn new(configs: &[TagRuleConfig]) -> Result<Tagger, TagRuleError> {
        let rules = configs
            .iter()
            .enumerate()
            .map(|(i, c)| TagRule::compile(i + 1, c))
            .collect::<Result<_, _>>()?;
        Ok(Tagger { rules })
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Adds the tags of every matching rule; returns how many tags were added.
    pub fn apply(&self, e: &mut Event) -> usize {
        let mut added = 0;
        for r in &self.rules {
            if r.matches(e) {
                for (k, v) in &r.add {
                    if !e.tags.contains_key(k) {
                        e.tags.insert(k.clone(), v.clone());
                        added += 1;
                    }
                }
            }
        }
        added
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use assim_cma::{EventKind, Severity};
    use assim_wire::Timestamp;

    fn ev(text: &str, host: &str) -> Event {
        Event {
            id: 1,
            time: Timestamp(0),
            kind: EventKind::LocalEvent,
            host: None,
            hostname: host.into(),
            tags: BTreeMap::from([("host".to_string(), host.to_string())]),
            text: text.into(),
            severity: Severity::Critical,
            body: None,
        }
    }

    #[test]
    fn rules_add_tags_in_order_without_overriding() {
        let rules: Vec<TagRuleConfig> = toml::from_str::<BTreeMap<String, Vec<TagRuleConfig>>>(
            r#"
            [[r]]
            text = "RAID"
            add = { subsystem = "storage", host = "forged" }
            [[r]]
            type = "local.*"
            host = "db*"
            filter = "severity>=error"
            add = { team = "dba", subsystem = "other" }
            "#,
        )
        .unwrap()
        .remove("r")
        .unwrap();
        let t = Tagger::new(&rules).unwrap();
        let mut e = ev("RAID STATUS CHANGE for VolumeID 2", "db1");
        assert_eq!(t.apply(&mut e), 2);
        assert_eq!(e.tags["subsystem"], "storage");
        assert_eq!(e.tags["team"], "dba");
        assert_eq!(e.tags["host"], "db1");
        let mut other = ev("disk ok", "web1");
        assert_eq!(t.apply(&mut other), 0);
    }

    #[test]
    fn bad_rules_name_the_rule() {
        let bad = TagRuleConfig {
            text: Some("(".into()),
            add: [("a".into(), "b".into())].into(),
            ..Default::default()
        };
        let e = Tagger::new(&[
            TagRuleConfig { add: [("a".into(), "b".into())].into(), ..Default::default() },
            bad,
        ])
        .unwrap_err();
        assert!(e.to_string().starts_with("tag rule 2: the text regex"), "{e}");
        let e = Tagger::new(&[TagRuleConfig::default()]).unwrap_err();
        assert_eq!(e, TagRuleError::NothingToAdd { index: 1 });
    }
}
