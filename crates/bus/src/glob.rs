//! Shell-style globs for filters and tagging rules: `*` matches any run of characters
//! (including none), `?` exactly one character, everything else itself. A pattern without a
//! wildcard is plain equality. Matching is by characters (not bytes) and takes
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

    /// Whether the pattern has a wildcard.
    pub fn is_literal(&self) -> bool {
        self.chars.is_none()
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        let Some(p) = &self.chars else { return self.pattern == text };
        // Iterative matcher with a single back-off point per `*` (the classic linear-space
        // algorithm): on a mismatch, retry from the last star with one more character eaten.
        let t: Vec<char> = text.chars().collect();
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
        while pi < p.len() && p[pi] == '*' {
            pi += 1;
        }
        pi == p.len()
    }
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
    use super::Glob;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        assert!(Glob::new("host.*").matches("host.down"));
        assert!(!Glob::new("host.*").matches("hostdown"));
        assert!(Glob::new("*.example.com").matches("web1.example.com"));
        assert!(!Glob::new("*.example.com").matches("example.com"));
        assert!(Glob::new("n?").matches("n1"));
        assert!(!Glob::new("n?").matches("n10"));
        assert!(Glob::new("*").matches(""));
        assert!(Glob::new("a*b*c").matches("aXXbYYc"));
        assert!(!Glob::new("a*b*c").matches("aXXbYY"));
        assert!(Glob::new("Compute1").matches("Compute1"));
        assert!(Glob::new("é?").matches("éü"));
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
        fn agrees_with_a_regex(p in "[ab*?\\n.]{0,8}", t in "[ab\\n.]{0,10}") {
            prop_assert_eq!(Glob::new(&p).matches(&t), reference(&p, &t), "{:?} vs {:?}", p, t);
        }
    }
}
