//! The CMA's reverse lookups (`assim addresses`): PTR queries over UDP to the configured
//! servers (`[fleet] dns_servers`, else the `nameserver` lines of `/etc/resolv.conf`), answered
//! from a cache while fresh. The wire format is `assim_export::dns` (sans-IO); this module only
//! sends and waits.
//!
//! Bounds: at most [`MAX_IN_FLIGHT`] queries outstanding at once, an answer awaited
//! [`ANSWER_TIMEOUT`] per round, one request's lookups cut off after [`BUDGET`] (the rest are
//! `no-answer`), at most [`MAX_CACHE`] cached names (the cache is emptied when full). An answer
//! is taken only from the server it was asked of, with the query's id and question. Names are
//! cached for their TTL (clamped to 1 min … 1 h), "no name" for 5 min; failures are not cached.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use assim_export::dns::{MAX_ANSWER, PtrAnswer, message_id, parse_ptr_answer, ptr_query};
use tokio::net::UdpSocket;

/// Queries outstanding at once.
pub const MAX_IN_FLIGHT: usize = 256;
/// How long a round waits for its answers.
pub const ANSWER_TIMEOUT: Duration = Duration::from_millis(1500);
/// The most time one request spends looking up.
pub const BUDGET: Duration = Duration::from_secs(10);
/// The most names cached.
pub const MAX_CACHE: usize = 100_000;

/// What a lookup found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    Name(String),
    NoName,
    NoAnswer,
    Error(String),
}

impl Lookup {
    /// The `lookup` field of `assim_api::AddressName`.
    pub fn word(&self) -> String {
        match self {
            Lookup::Name(_) => "ok".into(),
            Lookup::NoName => "no-name".into(),
            Lookup::NoAnswer => "no-answer".into(),
            Lookup::Error(e) => format!("error: {e}"),
        }
    }
}

/// The servers of `/etc/resolv.conf`-format text (at most 3, as the C library reads).
pub fn resolv_conf_servers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then_some(())?;
            let addr = words.next()?;
            // A scoped IPv6 address (`fe80::1%eth0`) is left out.
            addr.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53))
        })
        .take(3)
        .collect()
}

/// The resolver and its cache.
#[derive(Debug)]
pub struct Resolver {
    servers: Vec<SocketAddr>,
    cache: Mutex<HashMap<IpAddr, (Lookup, Instant)>>,
}

impl Resolver {
    /// A resolver asking `servers` in order (`127.0.0.1:53` when there are none, as the C
    /// library does).
    pub fn new(mut servers: Vec<SocketAddr>) -> Resolver {
        if servers.is_empty() {
            servers.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53));
        }
        Resolver { servers, cache: Mutex::new(HashMap::new()) }
    }

    /// The servers it asks.
    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// The name of every address (cached answers first, then the servers in order).
    pub async fn lookup_all(&self, ips: &[IpAddr]) -> HashMap<IpAddr, Lookup> {
        let now = Instant::now();
        let mut out = HashMap::new();
        let mut todo = Vec::new();
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            for ip in ips {
                match cache.get(ip) {
                    Some((l, until)) if *until > now => {
                        out.insert(*ip, l.clone());
                    }
                    _ => todo.push(*ip),
                }
            }
        }
        todo.sort();
        todo.dedup();
        let started = Instant::now();
        for server in &self.servers {
            if todo.is_empty() {
                break;
            }
            let mut unanswered = Vec::new();
            for chunk in todo.chunks(MAX_IN_FLIGHT) {
                if started.elapsed() >= BUDGET {
                    unanswered.extend_from_slice(chunk);
                    continue;
                }
                match ask(*server, chunk).await {
                    Ok(answers) => {
                        for ip in chunk {
                            match answers.get(ip) {
                                Some(PtrAnswer::Name { name, ttl }) => {
                                    let ttl = Duration::from_secs(u64::from(*ttl).clamp(60, 3600));
                                    self.remember(*ip, Lookup::Name(name.clone()), ttl);
                                    out.insert(*ip, Lookup::Name(name.clone()));
                                }
                                Some(PtrAnswer::NoName) => {
                                    self.remember(*ip, Lookup::NoName, Duration::from_secs(300));
                                    out.insert(*ip, Lookup::NoName);
                                }
                                Some(PtrAnswer::Failed { rcode }) => {
                                    out.insert(
                                        *ip,
                                        Lookup::Error(format!(
                                            "server {server} answered rcode {rcode}"
                                        )),
                                    );
                                    unanswered.push(*ip);
                                }
                                None => unanswered.push(*ip),
                            }
                        }
                    }
                    Err(e) => {
                        for ip in chunk {
                            out.insert(*ip, Lookup::Error(format!("{server}: {e}")));
                        }
                        unanswered.extend_from_slice(chunk);
                    }
                }
            }
            todo = unanswered;
        }
        for ip in todo {
            out.entry(ip).or_insert(Lookup::NoAnswer);
        }
        out
    }

    fn remember(&self, ip: IpAddr, l: Lookup, ttl: Duration) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHE {
            cache.clear();
        }
        cache.insert(ip, (l, Instant::now() + ttl));
    }
}

/// Asks `server` about every address of `ips` (at most [`MAX_IN_FLIGHT`]) and collects what
/// comes back within [`ANSWER_TIMEOUT`].
async fn ask(server: SocketAddr, ips: &[IpAddr]) -> std::io::Result<HashMap<IpAddr, PtrAnswer>> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(server).await?;
    let base: u16 = rand::random();
    let mut pending: HashMap<u16, IpAddr> = HashMap::new();
    for (i, ip) in ips.iter().enumerate() {
        let id = base.wrapping_add(i as u16);
        socket.send(&ptr_query(id, *ip)).await?;
        pending.insert(id, *ip);
    }
    let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
    let mut out = HashMap::new();
    let mut buf = vec![0u8; MAX_ANSWER];
    while !pending.is_empty() {
        let n = match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
            Err(_) => break,
            // ICMP port unreachable: nobody listens there.
            Ok(Err(e)) if out.is_empty() && e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(e);
            }
            Ok(Err(_)) => continue,
            Ok(Ok(n)) => n,
        };
        let msg = &buf[..n];
        let Some(id) = message_id(msg) else { continue };
        let Some(ip) = pending.get(&id).copied() else { continue };
        if let Ok(answer) = parse_ptr_answer(msg, id, ip) {
            pending.remove(&id);
            out.insert(ip, answer);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf() {
        let text = "# comment\nsearch example.org\nnameserver 192.0.2.53\nnameserver ::1\n\
                    nameserver fe80::1%eth0\nnameserver bogus\nnameserver 192.0.2.54\nnameserver 192.0.2.55\n";
        let s = resolv_conf_servers(text);
        assert_eq!(
            s,
            vec![
                "192.0.2.53:53".parse().unwrap(),
                "[::1]:53".parse().unwrap(),
                "192.0.2.54:53".parse().unwrap()
            ]
        );
    }

    #[tokio::test]
    async fn a_silent_server_gives_no_answer() {
        // A bound socket that never answers.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let r = Resolver::new(vec![silent.local_addr().unwrap()]);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let got = r.lookup_all(&[ip]).await;
        assert_eq!(got[&ip], Lookup::NoAnswer);
        drop(silent);
    }
}
