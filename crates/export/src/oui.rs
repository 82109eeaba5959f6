//! The IEEE registration authority's MAC prefix registry, as Debian's `ieee-data` ships it
//! (`/usr/share/ieee-data/{oui,mam,oui36}.csv`: MA-L 24-bit, MA-M 28-bit and MA-S 36-bit
//! prefixes), and the vendor of a MAC address by longest prefix.
//!
//! The files are CSV with a header (`Registry,Assignment,Organization Name,…`), fields quoted
//! when they hold a comma, `""` for a quote inside quotes. A line that does not have that shape
//! (wrong registry, a prefix that is not hex of the registry's length, an empty name) is counted
//! in [`Registry::skipped`] and left out; nothing in a file can make the parser fail or
//! allocate past the file's own size. Vendor names are cut to [`MAX_NAME`] characters.

use std::collections::HashMap;
use std::path::Path;

/// The registry files read from a directory, in order.
pub const FILES: [&str; 3] = ["oui.csv", "mam.csv", "oui36.csv"];

/// Where Debian's `ieee-data` puts them.
pub const DEFAULT_DIR: &str = "/usr/share/ieee-data";

/// The longest vendor name kept, in characters.
pub const MAX_NAME: usize = 120;

/// The largest registry file read, in bytes (today's `oui.csv` is about 3 MB).
pub const MAX_FILE: u64 = 64 * 1024 * 1024;

/// Prefix lengths in hex digits: MA-L, MA-M, MA-S.
const LENGTHS: [usize; 3] = [6, 7, 9];

/// Vendors by prefix.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    /// Per prefix length (index into `LENGTHS`): upper-case hex prefix → vendor.
    by_len: [HashMap<String, String>; 3],
    /// Lines left out because they did not have the registry's shape.
    pub skipped: usize,
}

/// The registry could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "no MAC vendor registry in {dir} ({why}); install Debian's ieee-data package or point \
         the CMA's --oui-dir at a directory with oui.csv"
    )]
    Missing { dir: String, why: String },
    #[error("{file} is larger than {MAX_FILE} bytes; is it the IEEE registry?")]
    TooLarge { file: String },
}

impl Registry {
    /// Reads every file of [`FILES`] that exists in `dir`; `oui.csv` must.
    pub fn load(dir: &Path) -> Result<Registry, RegistryError> {
        let mut reg = Registry::default();
        for (i, name) in FILES.iter().enumerate() {
            let path = dir.join(name);
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if i > 0 && e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(RegistryError::Missing {
                        dir: dir.display().to_string(),
                        why: format!("{name}: {e}"),
                    });
                }
            };
            if meta.len() > MAX_FILE {
                return Err(RegistryError::TooLarge { file: path.display().to_string() });
            }
            let bytes = std::fs::read(&path).map_err(|e| RegistryError::Missing {
                dir: dir.display().to_string(),
                why: format!("{name}: {e}"),
            })?;
            reg.add_csv(&String::from_utf8_lossy(&bytes));
        }
        Ok(reg)
    }

    /// Adds the records of one registry CSV file (the header and malformed records are
    /// skipped). A quoted field may span lines, as some addresses in the registry do.
    pub fn add_csv(&mut self, text: &str) {
        for fields in csv_records(text, 3) {
            if fields.first().is_some_and(|f| f == "Registry")
                || fields.iter().all(|f| f.trim().is_empty())
            {
                continue;
            }
            match parse_record(&fields) {
                Some((len_idx, prefix, name)) => {
                    self.by_len[len_idx].insert(prefix, name);
                }
                None => self.skipped += 1,
            }
        }
    }

    /// How many prefixes it holds.
    pub fn len(&self) -> usize {
        self.by_len.iter().map(HashMap::len).sum()
    }

    /// Whether it holds no prefix.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The vendor of a MAC (any of `aa:bb:…`, `aa-bb-…`, `aabb.ccdd.eeff`, `aabbccddeeff`), by
    /// the longest registered prefix.
    pub fn vendor(&self, mac: &str) -> Option<&str> {
        let hex = mac_hex(mac)?;
        for (i, len) in LENGTHS.iter().enumerate().rev() {
            if let Some(v) = self.by_len[i].get(&hex[..*len]) {
                return Some(v);
            }
        }
        None
    }
}

/// The 12 upper-case hex digits of a MAC, or `None` when it is not one.
pub fn mac_hex(mac: &str) -> Option<String> {
    let hex: String = mac.chars().filter(|c| !matches!(c, ':' | '-' | '.')).collect();
    (hex.len() == 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()) && mac.len() <= 17)
        .then(|| hex.to_ascii_uppercase())
}

/// Whether the MAC's locally-administered bit is set (assigned by software, not a vendor).
pub fn locally_administered(mac: &str) -> bool {
    mac_hex(mac)
        .and_then(|h| u8::from_str_radix(&h[..2], 16).ok())
        .is_some_and(|first| first & 0x02 != 0)
}

/// Whether the MAC is a group (multicast or broadcast) address.
pub fn multicast(mac: &str) -> bool {
    mac_hex(mac).and_then(|h| u8::from_str_radix(&h[..2], 16).ok()).is_some_and(|b| b & 1 != 0)
}

/// One registry record → (prefix length index, prefix, vendor).
fn parse_record(fields: &[String]) -> Option<(usize, String, String)> {
    let [registry, prefix, name] = fields else { return None };
    let len_idx = match registry.as_str() {
        "MA-L" => 0,
        "MA-M" => 1,
        "MA-S" => 2,
        _ => return None,
    };
    let prefix = prefix.trim().to_ascii_uppercase();
    if prefix.len() != LENGTHS[len_idx] || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let name: String = name.split_whitespace().collect::<Vec<_>>().join(" ");
    let name: String = name.chars().filter(|c| !c.is_control()).take(MAX_NAME).collect();
    if name.is_empty() {
        return None;
    }
    Some((len_idx, prefix, name))
}

/// The records of a CSV text, each cut to its first `n` fields (quotes, `""` and quoted line
/// breaks honoured; the rest of a record is skipped without being kept).
fn csv_records(text: &str, n: usize) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut fields: Vec<String> = Vec::with_capacity(n);
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    let end_field = |fields: &mut Vec<String>, field: &mut String| {
        let f = std::mem::take(field);
        if fields.len() < n {
            fields.push(f);
        }
    };
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => end_field(&mut fields, &mut field),
            (false, '\n') => {
                end_field(&mut fields, &mut field);
                records.push(std::mem::take(&mut fields));
            }
            (false, '\r') => {}
            _ if fields.len() < n => field.push(c),
            _ => {}
        }
    }
    if !field.is_empty() || !fields.is_empty() {
        end_field(&mut fields, &mut field);
        records.push(fields);
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SAMPLE: &str = "Registry,Assignment,Organization Name,Organization Address\n\
        MA-L,F4BD9E,\"Cisco Systems, Inc\",80 West Tasman Drive San Jose CA US 94568 \n\
        MA-L,00000C,Example Corp,\n\
        MA-M,741AE09,Private,\n\
        MA-S,70B3D5F2F,TELEPLATFORMS,\"Polbina st., 3/1 Moscow  RU 109388 \"\n\
        MA-L,XYZ123,Bad Hex,\n\
        MA-Q,001122,Unknown registry,\n\
        MA-L,001122,,\n\
        MA-L,334455,Two Line Corp,\"Street 1,\nCity \"\n\
        MA-L,667788,After Corp,Somewhere\n";

    #[test]
    fn vendors_by_longest_prefix() {
        let mut r = Registry::default();
        r.add_csv(SAMPLE);
        assert_eq!(r.len(), 6);
        assert_eq!(r.skipped, 3);
        assert_eq!(r.vendor("f4:bd:9e:00:00:01"), Some("Cisco Systems, Inc"));
        assert_eq!(r.vendor("F4-BD-9E-00-00-01"), Some("Cisco Systems, Inc"));
        assert_eq!(r.vendor("74:1a:e0:9f:00:01"), Some("Private"));
        assert_eq!(r.vendor("70:b3:d5:f2:f0:01"), Some("TELEPLATFORMS"));
        assert_eq!(r.vendor("70:b3:d5:f2:e0:01"), None);
        assert_eq!(r.vendor("00:00:0c:12:34:56"), Some("Example Corp"));
        // A quoted line break does not start a record.
        assert_eq!(r.vendor("33:44:55:00:00:01"), Some("Two Line Corp"));
        assert_eq!(r.vendor("66:77:88:00:00:01"), Some("After Corp"));
        assert_eq!(r.vendor("not a mac"), None);
        assert_eq!(r.vendor("f4:bd:9e:00:00:01:02"), None);
    }

    #[test]
    fn address_bits() {
        assert!(locally_administered("02:42:ac:11:00:02"));
        assert!(locally_administered("52:54:00:12:34:56"));
        assert!(!locally_administered("00:00:0c:12:34:56"));
        assert!(multicast("01:00:5e:00:00:01"));
        assert!(multicast("ff:ff:ff:ff:ff:ff"));
        assert!(!multicast("00:00:0c:12:34:56"));
    }

    #[test]
    fn debians_registry_loads_when_installed() {
        let dir = Path::new(DEFAULT_DIR);
        if !dir.join("oui.csv").exists() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{DEFAULT_DIR}/oui.csv is missing; run scripts/install-deps (ieee-data)"
            );
            eprintln!(
                "skip: {DEFAULT_DIR}/oui.csv absent (Debian ieee-data); scripts/install-deps"
            );
            return;
        }
        let r = Registry::load(dir).unwrap();
        assert!(r.len() > 30_000, "{} prefixes", r.len());
        assert_eq!(r.skipped, 0, "{} records skipped", r.skipped);
        assert!(r.vendor("00:00:0c:01:02:03").is_some_and(|v| v.contains("Cisco")));
    }

    #[test]
    fn a_missing_directory_names_the_fix() {
        let e = Registry::load(Path::new("/nonexistent/ieee")).unwrap_err().to_string();
        assert!(e.contains("ieee-data") && e.contains("--oui-dir"), "{e}");
    }

    proptest! {
        #[test]
        fn any_text_parses_without_panic(text in ".{0,400}") {
            let mut r = Registry::default();
            r.add_csv(&text);
            prop_assert!(r.len() <= text.lines().count() + 1);
        }

        #[test]
        fn a_written_line_reads_back(prefix in "[0-9A-F]{6}", name in "[a-zA-Z0-9 ,\"]{1,40}") {
            let quoted = format!("\"{}\"", name.replace('"', "\"\""));
            let mut r = Registry::default();
            r.add_csv(&format!("MA-L,{prefix},{quoted},Somewhere\n"));
            let want: String = name.split_whitespace().collect::<Vec<_>>().join(" ");
            let mac = format!("{}:{}:{}:00:00:01", &prefix[..2], &prefix[2..4], &prefix[4..]);
            if want.is_empty() {
                prop_assert_eq!(r.vendor(&mac), None);
            } else {
                prop_assert_eq!(r.vendor(&mac), Some(want.as_str()));
            }
        }
    }
}
