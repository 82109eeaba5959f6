//! Names and addresses are hostile input: a host chooses its own name, and every export writes
//! it into a file another program parses (`known_hosts` patterns, DNS zone lines, Nagios and
//! Icinga objects). Only names that are plain DNS-style names pass ([`valid_host_name`]); a host
//! whose name does not is left out of every export, with a comment saying so.

use std::net::IpAddr;

/// The longest host name accepted (DNS: 253 bytes).
pub const MAX_NAME: usize = 253;

/// Whether `name` is a plain host name: 1 to 253 bytes of dot-separated labels of ASCII
/// letters, digits, `-` and `_` (1 to 63 each, not starting with `-`). Nothing that a
/// `known_hosts` pattern (`*?!,[]|`), a zone file (`;()@$` and spaces) or a Nagios/Icinga
/// object (quotes, braces, newlines) would read as syntax.
pub fn valid_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The address of `text` (`192.0.2.7`, `192.0.2.7/24`, `2001:db8::7/64`) with its prefix
/// length, if it is one a peer can reach: loopback, unspecified, multicast and IPv6 link-local
/// addresses are not. IPv4-mapped IPv6 addresses come out as IPv4.
pub fn usable_address(text: &str) -> Option<(IpAddr, Option<u8>)> {
    let (ip, prefix) = match text.split_once('/') {
        Some((ip, p)) => (ip, Some(p.parse::<u8>().ok()?)),
        None => (text, None),
    };
    let ip: IpAddr = ip.parse().ok()?;
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if prefix.is_some_and(|p| p > max) {
        return None;
    }
    let link_local_v6 = matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || link_local_v6 {
        return None;
    }
    Some((ip, prefix))
}

/// The subnet `ip/prefix` is in, as `network/prefix`.
pub fn subnet_of(ip: IpAddr, prefix: u8) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix.min(32))) };
            format!("{}/{prefix}", std::net::Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let mask =
                if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix.min(128))) };
            format!("{}/{prefix}", std::net::Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_pass_and_syntax_does_not() {
        for ok in ["web1", "web-1.example.com", "a_b", "x"] {
            assert!(valid_host_name(ok), "{ok}");
        }
        for bad in [
            "",
            "web 1",
            "web1,evil",
            "*",
            "!web",
            "|1|x",
            "web1\nevil",
            "-web",
            "a..b",
            "web;rm",
            "we\"b",
            "{x}",
            "[a]:22",
            &"a".repeat(64),
            &["a"; 128].join("."),
        ] {
            assert!(!valid_host_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn addresses_and_subnets() {
        assert_eq!(usable_address("10.1.2.3/24").unwrap().0.to_string(), "10.1.2.3");
        assert_eq!(usable_address("::ffff:10.1.2.3").unwrap().0.to_string(), "10.1.2.3");
        for bad in ["127.0.0.1/8", "fe80::1/64", "::1", "0.0.0.0", "10.1.2.3/40", "x", "224.0.0.1"]
        {
            assert_eq!(usable_address(bad), None, "{bad}");
        }
        assert_eq!(subnet_of("10.1.2.3".parse().unwrap(), 24), "10.1.2.0/24");
        assert_eq!(subnet_of("2001:db8::7".parse().unwrap(), 64), "2001:db8::/64");
        assert_eq!(subnet_of("10.1.2.3".parse().unwrap(), 0), "0.0.0.0/0");
    }
}
