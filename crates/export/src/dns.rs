//! Reverse lookups (PTR) in DNS wire format (RFC 1035), sans-IO: the CMA's resolver
//! (`crates/cma-daemon/src/reverse_dns.rs`) sends [`ptr_query`] over UDP and reads the answer
//! with [`parse_ptr_answer`]. Only what a PTR lookup needs: one question, answers scanned for a
//! PTR record of the asked name (a CNAME chain, as RFC 2317 classless delegation uses, is
//! followed within the same answer).
//!
//! An answer is hostile input: its id and question must match the query, every length is
//! checked before it is read, a name is at most 255 bytes with labels of at most 63, and a
//! compression pointer must point backwards (so no loop), at most 64 per name.

use std::net::IpAddr;

/// The largest answer read over UDP (EDNS is not offered, so 512 would do; a little slack).
pub const MAX_ANSWER: usize = 4096;

const TYPE_PTR: u16 = 12;
const TYPE_CNAME: u16 = 5;
const CLASS_IN: u16 = 1;

/// What a server said about one address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PtrAnswer {
    /// The name (without the trailing dot) and its TTL in seconds.
    Name { name: String, ttl: u32 },
    /// The server answered: there is no name (NXDOMAIN, or no PTR record).
    NoName,
    /// The server failed (SERVFAIL, REFUSED, …): ask another, or later.
    Failed { rcode: u8 },
}

/// Why an answer was not taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("answer too short or cut off")]
    Truncated,
    #[error("not an answer to this query")]
    Mismatch,
    #[error("malformed name")]
    BadName,
    #[error("the server cut the answer (TC): no TCP fallback")]
    TruncatedBit,
}

/// The name to look up for `ip`: `4.3.2.1.in-addr.arpa` or the nibbles under `ip6.arpa`.
pub fn ptr_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(72);
            for b in v6.octets().iter().rev() {
                s.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
                s.push('.');
                s.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
                s.push('.');
            }
            s.push_str("ip6.arpa");
            s
        }
    }
}

/// A recursive PTR query for `ip` with message id `id`.
pub fn ptr_query(id: u16, ip: IpAddr) -> Vec<u8> {
    let mut q = Vec::with_capacity(90);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00]); // RD
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // 1 question
    for label in ptr_name(ip).split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&TYPE_PTR.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    q
}

/// The id of a message (to match an answer to its query), if it is long enough.
pub fn message_id(msg: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.first()?, *msg.get(1)?]))
}

fn u16_at(msg: &[u8], at: usize) -> Result<u16, DnsError> {
    let b = msg.get(at..at + 2).ok_or(DnsError::Truncated)?;
    Ok(u16::from_be_bytes([b[0], b[1]]))
}

/// Reads the name at `at`: (name in lower case without the trailing dot, offset after it).
fn read_name(msg: &[u8], mut at: usize) -> Result<(String, usize), DnsError> {
    let mut name = String::new();
    let mut end = None;
    let mut jumps = 0;
    loop {
        let len = *msg.get(at).ok_or(DnsError::Truncated)? as usize;
        match len & 0xc0 {
            0x00 if len == 0 => {
                return Ok((name, end.unwrap_or(at + 1)));
            }
            0x00 => {
                let label = msg.get(at + 1..at + 1 + len).ok_or(DnsError::Truncated)?;
                if name.len() + len + 1 > 255 {
                    return Err(DnsError::BadName);
                }
                if !name.is_empty() {
                    name.push('.');
                }
                for &b in label {
                    if !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                        return Err(DnsError::BadName);
                    }
                    name.push(b.to_ascii_lowercase() as char);
                }
                at += 1 + len;
            }
            0xc0 => {
                let target = (u16_at(msg, at)? & 0x3fff) as usize;
                jumps += 1;
                if target >= at || jumps > 64 {
                    return Err(DnsError::BadName);
                }
                end.get_or_insert(at + 2);
                at = target;
            }
            _ => return Err(DnsError::BadName),
        }
    }
}

/// Reads the answer to [`ptr_query`]`(id, ip)`.
pub fn parse_ptr_answer(msg: &[u8], id: u16, ip: IpAddr) -> Result<PtrAnswer, DnsError> {
    if msg.len() < 12 {
        return Err(DnsError::Truncated);
    }
    let flags = u16_at(msg, 2)?;
    if message_id(msg) != Some(id) || flags & 0x8000 == 0 || u16_at(msg, 4)? != 1 {
        return Err(DnsError::Mismatch);
    }
    if flags & 0x0200 != 0 {
        return Err(DnsError::TruncatedBit);
    }
    let mut want = ptr_name(ip);
    let (qname, mut at) = read_name(msg, 12)?;
    if qname != want || u16_at(msg, at)? != TYPE_PTR || u16_at(msg, at + 2)? != CLASS_IN {
        return Err(DnsError::Mismatch);
    }
    at += 4;
    match (flags & 0x000f) as u8 {
        0 => {}
        3 => return Ok(PtrAnswer::NoName),
        rcode => return Ok(PtrAnswer::Failed { rcode }),
    }
    let answers = u16_at(msg, 6)?;
    let mut found = None;
    for _ in 0..answers {
        let (owner, next) = read_name(msg, at)?;
        let rtype = u16_at(msg, next)?;
        let class = u16_at(msg, next + 2)?;
        let ttl_bytes = msg.get(next + 4..next + 8).ok_or(DnsError::Truncated)?;
        let ttl = u32::from_be_bytes([ttl_bytes[0], ttl_bytes[1], ttl_bytes[2], ttl_bytes[3]]);
        let rdlen = u16_at(msg, next + 8)? as usize;
        let rdata = next + 10;
        if msg.len() < rdata + rdlen {
            return Err(DnsError::Truncated);
        }
        if class == CLASS_IN && owner == want {
            if rtype == TYPE_CNAME {
                want = read_name(msg, rdata)?.0;
            } else if rtype == TYPE_PTR && found.is_none() {
                let (name, _) = read_name(msg, rdata)?;
                if !name.is_empty() {
                    found = Some(PtrAnswer::Name { name, ttl });
                }
            }
        }
        at = rdata + rdlen;
    }
    Ok(found.unwrap_or(PtrAnswer::NoName))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An answer to `ptr_query(id, ip)` holding `records` (type, rdata name) for the
    /// question's name, written with a compression pointer to the question.
    fn answer(id: u16, ip: IpAddr, rcode: u8, records: &[(u16, &str)]) -> Vec<u8> {
        let mut m = ptr_query(id, ip);
        m[2] = 0x81;
        m[3] = 0x80 | rcode;
        m[6..8].copy_from_slice(&(records.len() as u16).to_be_bytes());
        for (rtype, name) in records {
            m.extend_from_slice(&[0xc0, 12]);
            m.extend_from_slice(&rtype.to_be_bytes());
            m.extend_from_slice(&CLASS_IN.to_be_bytes());
            m.extend_from_slice(&300u32.to_be_bytes());
            let mut rd = Vec::new();
            for l in name.split('.') {
                rd.push(l.len() as u8);
                rd.extend_from_slice(l.as_bytes());
            }
            rd.push(0);
            m.extend_from_slice(&(rd.len() as u16).to_be_bytes());
            m.extend_from_slice(&rd);
        }
        m
    }

    #[test]
    fn names_of_addresses() {
        assert_eq!(ptr_name("192.0.2.17".parse().unwrap()), "17.2.0.192.in-addr.arpa");
        assert_eq!(
            ptr_name("2001:db8::1".parse().unwrap()),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        );
    }

    #[test]
    fn reads_a_name_no_name_and_failures() {
        let ip: IpAddr = "192.0.2.17".parse().unwrap();
        let a = answer(7, ip, 0, &[(TYPE_PTR, "Web1.Example.org")]);
        assert_eq!(
            parse_ptr_answer(&a, 7, ip),
            Ok(PtrAnswer::Name { name: "web1.example.org".into(), ttl: 300 })
        );
        assert_eq!(parse_ptr_answer(&answer(7, ip, 3, &[]), 7, ip), Ok(PtrAnswer::NoName));
        assert_eq!(parse_ptr_answer(&answer(7, ip, 0, &[]), 7, ip), Ok(PtrAnswer::NoName));
        assert_eq!(
            parse_ptr_answer(&answer(7, ip, 2, &[]), 7, ip),
            Ok(PtrAnswer::Failed { rcode: 2 })
        );
        assert_eq!(parse_ptr_answer(&a, 8, ip), Err(DnsError::Mismatch));
        let other: IpAddr = "192.0.2.18".parse().unwrap();
        assert_eq!(parse_ptr_answer(&a, 7, other), Err(DnsError::Mismatch));
        assert_eq!(parse_ptr_answer(&a[..a.len() - 3], 7, ip), Err(DnsError::Truncated));
        // The query itself is not an answer.
        assert_eq!(parse_ptr_answer(&ptr_query(7, ip), 7, ip), Err(DnsError::Mismatch));
    }

    #[test]
    fn a_pointer_loop_is_refused() {
        let ip: IpAddr = "192.0.2.17".parse().unwrap();
        let mut a = answer(7, ip, 0, &[(TYPE_PTR, "x")]);
        let n = a.len();
        // Point the PTR's rdata at itself.
        a[n - 3] = 0xc0;
        a[n - 2] = (n - 3) as u8;
        a[n - 1] = 0;
        assert_eq!(parse_ptr_answer(&a, 7, ip), Err(DnsError::BadName));
    }

    proptest! {
        #[test]
        fn any_bytes_are_read_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), id: u16) {
            let ip: IpAddr = "192.0.2.17".parse().unwrap();
            let _ = parse_ptr_answer(&bytes, id, ip);
            // And a valid header in front of noise.
            let mut m = ptr_query(id, ip);
            m[2] = 0x81; m[3] = 0x80; m[7] = 3;
            m.extend_from_slice(&bytes);
            let _ = parse_ptr_answer(&m, id, ip);
        }
    }
}
