//! Shell-style globs, as event filters, tagging rules and check rules use them: `*` matches
//! any run of characters (including none), `?` exactly one character, everything else itself.
//! There is no escape and no character class. A pattern matches the whole text; a pattern
//! without a wildcard is plain equality. Matching is by characters (not bytes) and takes
//! O(pattern × text) time at worst: no backtracking blow-up.

use std::fmt;

/// A compiled glob.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Glob {
    pattern: String,
    /// `None` when the pattern has no wildcard (equality is then a string compare).
    chars: Option<Vec<char>>,
}

impl Glob {
    /// Compiles `pattern`. Every string is a valid glob.
    pub fn new(pattern: &str) -> Glob {
        let wild = pattern.contains(['*', '?']);
        Glob { pattern: pattern.to_owned(), chars: wild.then(|| pattern.chars().collect()) }
    }

    /// The pattern as given.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether the pattern has no wildcard.
    pub fn is_literal(&self) -> bool {
        self.chars.is_none()
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        match &self.chars {
            None => self.pattern == text,
            Some(p) => matches_chars(p, &text.chars().collect::<Vec<_>>()),
        }
    }
}

/// Whether `text` matches the whole of `pattern`, without keeping a compiled [`Glob`].
pub fn matches(pattern: &str, text: &str) -> bool {
    if !pattern.contains(['*', '?']) {
        return pattern == text;
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    matches_chars(&p, &t)
}

/// The classic linear-space matcher with one back-off point: on a mismatch, retry from the last
/// `*` with one more character eaten by it.
fn matches_chars(p: &[char], t: &[char]) -> bool {
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({:?})", self.pattern)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

#[cfg(test)]
mod tests {
    use super::{Glob, matches};
    use proptest::prelude::*;

    #[test]
    fn examples() {
        let cases = [
            ("host.*", "host.down", true),
            ("host.*", "hostdown", false),
            ("*.example.com", "web1.example.com", true),
            ("*.example.com", "example.com", false),
            ("n?", "n1", true),
            ("n?", "n10", false),
            ("*", "", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("Compute1", "Compute1", true),
            ("é?", "éü", true),
            ("*/sshd", "/usr/sbin/sshd", true),
            ("python3*", "python3.11", true),
            ("*http.server*", "python3 -m http.server 8000", true),
            ("a?c", "ac", false),
            ("*/nginx", "/usr/sbin/nginx2", false),
            // A `*` in the text is an ordinary character: the pattern's `*` still backs off.
            ("*a", "*ba", true),
        ];
        for (p, t, want) in cases {
            assert_eq!(Glob::new(p).matches(t), want, "{p:?} {t:?}");
            assert_eq!(matches(p, t), want, "{p:?} {t:?}");
        }
    }

    /// The reference: translate to an anchored regex.
    fn reference(p: &str, t: &str) -> bool {
        let mut re = String::from("^");
        for c in p.chars() {
            match c {
                '*' => re.push_str(".*"),
                '?' => re.push('.'),
                c => re.push_str(&regex::escape(&c.to_string())),
            }
        }
        re.push('$');
        regex::RegexBuilder::new(&re).dot_matches_new_line(true).build().unwrap().is_match(t)
    }

    proptest! {
        #[test]
        fn agrees_with_a_regex(p in "[ab*?\\n.]{0,8}", t in "[ab*?\\n.]{0,10}") {
            let want = reference(&p, &t);
            prop_assert_eq!(Glob::new(&p).matches(&t), want, "{:?} vs {:?}", p, t);
            prop_assert_eq!(matches(&p, &t), want, "{:?} vs {:?}", p, t);
        }

        #[test]
        fn a_literal_pattern_matches_only_itself(a in "[a-z/.]{0,12}", b in "[a-z/.]{0,12}") {
            prop_assert_eq!(matches(&a, &b), a == b);
        }

        #[test]
        fn star_matches_any_infix(pre in "[a-z]{0,5}", mid in "\\PC{0,8}", suf in "[a-z]{0,5}") {
            let text = format!("{pre}{mid}{suf}");
            let pattern = format!("{pre}*{suf}");
            prop_assert!(matches(&pattern, &text));
        }

        #[test]
        fn never_panics(p in "\\PC{0,20}", t in "\\PC{0,20}") {
            let _ = matches(&p, &t);
        }
    }
}
