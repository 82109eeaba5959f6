//! The CMA's reverse lookups against a real DNS server (Debian's `dnsmasq` on a loopback port,
//! answering from a hosts file and NXDOMAIN for every other reverse name): a name over IPv4 and
//! IPv6, no name, cached answers once the server is gone, and a server that does not answer.

use std::net::IpAddr;

use assim_cma_daemon::reverse_dns::{Lookup, Resolver};
use assim_util::testing::Dnsmasq;

#[tokio::test]
async fn names_from_a_real_dns_server() {
    let Some(server) =
        Dnsmasq::start("192.0.2.17 web1.example.org\n2001:db8::17 web1-v6.example.org\n")
    else {
        return;
    };
    let named: IpAddr = "192.0.2.17".parse().unwrap();
    let named6: IpAddr = "2001:db8::17".parse().unwrap();
    let nameless: IpAddr = "192.0.2.18".parse().unwrap();
    let r = Resolver::new(vec![server.addr]);
    let got = r.lookup_all(&[named, named6, nameless]).await;
    assert_eq!(got[&named], Lookup::Name("web1.example.org".into()));
    assert_eq!(got[&named6], Lookup::Name("web1-v6.example.org".into()));
    assert_eq!(got[&nameless], Lookup::NoName);

    // Answers are cached: the same names with the server gone.
    drop(server);
    let again = r.lookup_all(&[named, nameless]).await;
    assert_eq!(again[&named], Lookup::Name("web1.example.org".into()));
    assert_eq!(again[&nameless], Lookup::NoName);
    // A new address goes to the dead server: an error or no answer, never a name.
    let other: IpAddr = "192.0.2.19".parse().unwrap();
    let dead = r.lookup_all(&[other]).await;
    assert!(matches!(dead[&other], Lookup::NoAnswer | Lookup::Error(_)), "{:?}", dead[&other]);
}
