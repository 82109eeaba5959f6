//! Security best-practice audit (issue 19): rules that judge a host's `security` discovery
//! document ([`assim_discovery::security::Security`]), their results, and scores. Sans-IO:
//! the CMA's core evaluates the rules whenever a host's document changes
//! (`assim_cma::audit_watch`, which raises the events), and the API evaluates them for the
//! queries (`assim audit …`).
//!
//! - A **rule** has an id, a category, a severity, the reference it follows, a plain-language
//!   reason and one **check**: a source (`sshd`, `sysctl`, `login_defs`, `pam`, `sudoers`,
//!   `auditd`, `file`) with a key, and conditions (`is`, `not`, `min`, `max`, `contains`,
//!   `lacks`, `max_mode`, `owner`). The shipped rules are `rules/default.toml`; operators add
//!   rules (same format; an operator's rule with a shipped id replaces it) and silence rules by id.
//! - A **result** is pass, fail (with what was found) or n/a (the source or key is absent: no
//!   sshd installed, a sysctl this kernel lacks, a file that does not exist).
//! - **Scores** are 0–100: the severity-weighted share of passed rules among those that applied
//!   (critical 8, error 4, warning 2, notice and info 1), per host, per rule (over hosts) and
//!   per category.

use std::collections::BTreeMap;

use assim_discovery::security::Security;
use serde::{Deserialize, Serialize};

/// The shipped rules.
pub const DEFAULT_RULES: &str = include_str!("../rules/default.toml");

/// The most rules a rule set holds.
pub const MAX_RULES: usize = 10_000;

/// How bad a failure of the rule is (the event bus's severities, least severe first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleSeverity {
    Info,
    Notice,
    Warning,
    Error,
    Critical,
}

impl RuleSeverity {
    /// The weight of the rule in a score.
    pub fn weight(self) -> u32 {
        match self {
            RuleSeverity::Critical => 8,
            RuleSeverity::Error => 4,
            RuleSeverity::Warning => 2,
            RuleSeverity::Notice | RuleSeverity::Info => 1,
        }
    }

    /// The lower-case name (`critical`).
    pub fn name(self) -> &'static str {
        match self {
            RuleSeverity::Info => "info",
            RuleSeverity::Notice => "notice",
            RuleSeverity::Warning => "warning",
            RuleSeverity::Error => "error",
            RuleSeverity::Critical => "critical",
        }
    }
}

/// What a rule looks at and what it wants. Exactly one source; at least one condition.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// An sshd keyword (lower case, as `sshd -T` prints it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sshd: Option<String>,
    /// A kernel setting (`kernel.randomize_va_space`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sysctl: Option<String>,
    /// A `login.defs` keyword (`PASS_MAX_DAYS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_defs: Option<String>,
    /// A file of `/etc/pam.d` (`common-auth`): its lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pam: Option<String>,
    /// `defaults` (the `Defaults` entries) or `nopasswd_rules` (how many rules grant NOPASSWD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sudoers: Option<String>,
    /// `installed` or `running` (`true`/`false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auditd: Option<String>,
    /// An absolute path: its mode and owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The value must be one of these (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is: Option<Vec<String>>,
    /// The value must be none of these (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not: Option<Vec<String>>,
    /// The value, a number (sshd times like `1m30s` count in seconds), must be at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<i64>,
    /// … at most this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<i64>,
    /// Some line / entry must contain this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
    /// No line / entry may contain this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lacks: Option<String>,
    /// `file`: no permission bit beyond these (octal, `"0640"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_mode: Option<String>,
    /// `file`: owned by this uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<u32>,
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub id: String,
    pub category: String,
    pub severity: RuleSeverity,
    pub reference: String,
    pub reason: String,
    pub check: Check,
}

/// A rule's verdict on one host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", content = "detail", rename_all = "lowercase")]
pub enum Outcome {
    Pass(String),
    Fail(String),
    #[serde(rename = "n/a")]
    NotApplicable(String),
}

impl Outcome {
    /// `pass`, `fail` or `n/a`.
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Pass(_) => "pass",
            Outcome::Fail(_) => "fail",
            Outcome::NotApplicable(_) => "n/a",
        }
    }

    /// What was found (or why the rule does not apply).
    pub fn detail(&self) -> &str {
        match self {
            Outcome::Pass(d) | Outcome::Fail(d) | Outcome::NotApplicable(d) => d,
        }
    }
}

/// Why rules were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RulesError {
    #[error("{origin}: {why}")]
    Syntax { origin: String, why: String },
    #[error("{origin}: rule {id:?}: {why}")]
    Rule { origin: String, id: String, why: String },
    #[error("more than {MAX_RULES} rules")]
    TooMany,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rule: Vec<Rule>,
}

/// The rules in force: shipped, added, with silenced ids left out.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
    /// Ids silenced by the operator (kept out of results, scores and events).
    pub silenced: Vec<String>,
}

impl RuleSet {
    /// The shipped rules only.
    pub fn defaults() -> RuleSet {
        RuleSet::build(&[], &[]).expect("the shipped rules are valid")
    }

    /// The shipped rules, then each `(origin, TOML text)` in order (a rule with an id already
    /// present replaces it), without the `silenced` ids.
    pub fn build(files: &[(&str, &str)], silenced: &[String]) -> Result<RuleSet, RulesError> {
        let mut by_id: BTreeMap<String, Rule> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        let all = std::iter::once(("shipped rules", DEFAULT_RULES)).chain(files.iter().copied());
        for (origin, text) in all {
            let file: RulesFile = toml::from_str(text)
                .map_err(|e| RulesError::Syntax { origin: origin.into(), why: e.to_string() })?;
            for rule in file.rule {
                validate(&rule).map_err(|why| RulesError::Rule {
                    origin: origin.into(),
                    id: rule.id.clone(),
                    why,
                })?;
                if !by_id.contains_key(&rule.id) {
                    order.push(rule.id.clone());
                }
                by_id.insert(rule.id.clone(), rule);
                if by_id.len() > MAX_RULES {
                    return Err(RulesError::TooMany);
                }
            }
        }
        let rules = order
            .into_iter()
            .filter(|id| !silenced.contains(id))
            .filter_map(|id| by_id.remove(&id))
            .collect();
        Ok(RuleSet { rules, silenced: silenced.to_vec() })
    }

    /// The rules in force.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// One rule by id.
    pub fn rule(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id == id)
    }

    /// Every rule's verdict on one host's document (in rule order).
    pub fn evaluate(&self, doc: &Security) -> Vec<(&Rule, Outcome)> {
        self.rules.iter().map(|r| (r, evaluate(&r.check, doc))).collect()
    }
}

fn validate(rule: &Rule) -> Result<(), String> {
    let ok_text = |s: &str, max: usize| {
        !s.trim().is_empty() && s.len() <= max && !s.chars().any(char::is_control)
    };
    if !ok_text(&rule.id, 64)
        || !rule.id.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
    {
        return Err("the id must be 1–64 letters, digits, '-', '.' or '_'".into());
    }
    if !ok_text(&rule.category, 64)
        || !ok_text(&rule.reference, 512)
        || !ok_text(&rule.reason, 1024)
    {
        return Err("category, reference and reason must be set (one line each)".into());
    }
    let c = &rule.check;
    let sources = [&c.sshd, &c.sysctl, &c.login_defs, &c.pam, &c.sudoers, &c.auditd, &c.file];
    if sources.iter().filter(|s| s.is_some()).count() != 1 {
        return Err("the check must name exactly one of sshd, sysctl, login_defs, pam, sudoers, auditd, file".into());
    }
    let conditions = [
        c.is.is_some(),
        c.not.is_some(),
        c.min.is_some(),
        c.max.is_some(),
        c.contains.is_some(),
        c.lacks.is_some(),
        c.max_mode.is_some(),
        c.owner.is_some(),
    ];
    if !conditions.iter().any(|x| *x) {
        return Err(
            "the check has no condition (is, not, min, max, contains, lacks, max_mode, owner)"
                .into(),
        );
    }
    if (c.max_mode.is_some() || c.owner.is_some()) && c.file.is_none() {
        return Err("max_mode and owner apply to file checks only".into());
    }
    if let Some(m) = &c.max_mode
        && u32::from_str_radix(m, 8).map_or(true, |v| v > 0o7777)
    {
        return Err(format!("max_mode {m:?} is not an octal mode"));
    }
    if c.sudoers.as_deref().is_some_and(|s| !matches!(s, "defaults" | "nopasswd_rules")) {
        return Err("sudoers is `defaults` or `nopasswd_rules`".into());
    }
    if c.auditd.as_deref().is_some_and(|s| !matches!(s, "installed" | "running")) {
        return Err("auditd is `installed` or `running`".into());
    }
    Ok(())
}

/// A number, or an sshd time (`90`, `1m30s`, `2h`) in seconds.
pub fn number(text: &str) -> Option<i64> {
    if let Ok(n) = text.trim().parse::<i64>() {
        return Some(n);
    }
    let mut total: i64 = 0;
    let mut digits = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c.to_ascii_lowercase() {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return None,
        };
        total = total.checked_add(digits.parse::<i64>().ok()?.checked_mul(unit)?)?;
        digits.clear();
    }
    if !digits.is_empty() {
        total = total.checked_add(digits.parse::<i64>().ok()?)?;
    }
    Some(total)
}

/// The value conditions (`is`, `not`, `min`, `max`) on one value.
fn judge_value(c: &Check, key: &str, value: &str) -> Outcome {
    let found = format!("{key} is {value}");
    let lower = value.to_ascii_lowercase();
    if let Some(is) = &c.is
        && !is.iter().any(|v| v.to_ascii_lowercase() == lower)
    {
        return Outcome::Fail(format!("{found}; wanted {}", is.join(" or ")));
    }
    if let Some(not) = &c.not
        && not.iter().any(|v| v.to_ascii_lowercase() == lower)
    {
        return Outcome::Fail(format!("{found}; must not be"));
    }
    if c.min.is_some() || c.max.is_some() {
        let Some(n) = number(value) else {
            return Outcome::Fail(format!("{found}; not a number"));
        };
        if let Some(min) = c.min
            && n < min
        {
            return Outcome::Fail(format!("{found}; wanted at least {min}"));
        }
        if let Some(max) = c.max
            && n > max
        {
            return Outcome::Fail(format!("{found}; wanted at most {max}"));
        }
    }
    Outcome::Pass(found)
}

/// `contains` / `lacks` over lines.
fn judge_lines(c: &Check, what: &str, lines: &[String]) -> Outcome {
    if let Some(want) = &c.contains
        && !lines.iter().any(|l| l.contains(want.as_str()))
    {
        return Outcome::Fail(format!("{what} has no {want:?}"));
    }
    if let Some(bad) = &c.lacks
        && let Some(line) = lines.iter().find(|l| l.contains(bad.as_str()))
    {
        return Outcome::Fail(format!("{what} has {bad:?}: {line}"));
    }
    Outcome::Pass(format!("{what} as wanted"))
}

/// One check on one document.
pub fn evaluate(c: &Check, doc: &Security) -> Outcome {
    let na = |why: String| Outcome::NotApplicable(why);
    if let Some(key) = &c.sshd {
        if doc.sshd_source == "absent" || doc.sshd.is_empty() {
            return na("sshd is not installed".into());
        }
        return match doc.sshd.get(&key.to_ascii_lowercase()) {
            Some(v) => judge_value(c, key, v),
            None => na(format!("sshd reports no {key}")),
        };
    }
    if let Some(key) = &c.sysctl {
        return match doc.sysctl.get(key) {
            Some(v) => judge_value(c, key, v),
            None => na(format!("this kernel has no {key}")),
        };
    }
    if let Some(key) = &c.login_defs {
        return match doc.login_defs.get(key) {
            Some(v) => judge_value(c, key, v),
            None => na(format!("login.defs does not set {key}")),
        };
    }
    if let Some(file) = &c.pam {
        return match doc.pam.get(file) {
            Some(lines) => judge_lines(c, &format!("/etc/pam.d/{file}"), lines),
            None => na(format!("no /etc/pam.d/{file}")),
        };
    }
    if let Some(what) = &c.sudoers {
        let Some(s) = &doc.sudoers else { return na("sudo is not installed".into()) };
        return if what == "defaults" {
            judge_lines(c, "sudoers Defaults", &s.defaults)
        } else {
            judge_value(c, "sudoers NOPASSWD rules", &s.nopasswd_rules.to_string())
        };
    }
    if let Some(what) = &c.auditd {
        let value =
            if what == "installed" { Some(doc.auditd.installed) } else { doc.auditd.running };
        return match value {
            Some(v) => judge_value(c, &format!("auditd {what}"), if v { "true" } else { "false" }),
            None => na(format!("auditd {what} is known on the live system only")),
        };
    }
    if let Some(path) = &c.file {
        let Some(m) = doc.files.get(path) else { return na(format!("no {path}")) };
        let found = format!("{path} is {:04o} owned by uid {}", m.mode, m.uid);
        if let Some(max) = c.max_mode.as_deref().and_then(|t| u32::from_str_radix(t, 8).ok())
            && m.mode & !max != 0
        {
            return Outcome::Fail(format!("{found}; wanted at most {max:04o}"));
        }
        if let Some(owner) = c.owner
            && m.uid != owner
        {
            return Outcome::Fail(format!("{found}; wanted uid {owner}"));
        }
        return Outcome::Pass(found);
    }
    na("the check names no source".into())
}

/// Passed and failed weight and counts of some results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub passed: u32,
    pub failed: u32,
    pub not_applicable: u32,
    pass_weight: u32,
    fail_weight: u32,
}

impl Tally {
    /// Counts one result of a rule of `severity`.
    pub fn add(&mut self, severity: RuleSeverity, outcome: &Outcome) {
        match outcome {
            Outcome::Pass(_) => {
                self.passed += 1;
                self.pass_weight += severity.weight();
            }
            Outcome::Fail(_) => {
                self.failed += 1;
                self.fail_weight += severity.weight();
            }
            Outcome::NotApplicable(_) => self.not_applicable += 1,
        }
    }

    /// 0–100, the weighted share passed; 100 when nothing applied.
    pub fn score(&self) -> u32 {
        let total = self.pass_weight + self.fail_weight;
        (self.pass_weight * 100 + total / 2).checked_div(total).unwrap_or(100)
    }
}

#[cfg(test)]
mod tests;
