//! The SSRF guard: which addresses and hosts an `http(s)://` fetch may reach.
//!
//! A job URL is attacker-controlled input. Without a guard, a job could make
//! the worker read the cloud metadata service (`169.254.169.254`), a sidecar
//! on loopback, or anything on the VPC. Every address a fetch would connect to
//! — literal IPs in the URL, every DNS answer, every redirect hop — passes
//! [`Guard::check_ip`] first, and the HTTP client connects only to addresses
//! that passed (so a DNS answer that changes between check and connect cannot
//! slip through: there is no second lookup).
//!
//! Refused: loopback, private (10/8, 172.16/12, 192.168/16, fc00::/7), shared
//! address space (100.64/10), link-local (169.254/16, fe80::/10), multicast,
//! unspecified, broadcast and reserved (240/4), documentation and benchmarking
//! ranges, IETF protocol assignments, and the IPv6 forms that embed an IPv4
//! address (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`, NAT64
//! `64:ff9b::/96`, 6to4 `2002::/16`), which are judged by the IPv4 address
//! they carry. `--allow-private-cidrs` admits chosen ranges (tests use
//! `127.0.0.0/8`); `--allow-hosts` restricts fetches to named hosts.

use ipnet::IpNet;
use scorefleet_core::error::{ErrorKind, JobError};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What `http(s)://` fetches may reach.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// Ranges admitted even though they are private/loopback/…: an operator's
    /// explicit choice (an internal image server, or tests on 127.0.0.1).
    allow_cidrs: Vec<IpNet>,
    /// When set, only these host names (exact, case-insensitive) may be
    /// fetched; the address checks still apply to what they resolve to.
    allow_hosts: Option<Vec<String>>,
}

impl Guard {
    /// A guard with the given allowlists.
    pub fn new(allow_cidrs: Vec<IpNet>, allow_hosts: Option<Vec<String>>) -> Self {
        let allow_hosts = allow_hosts.map(|hs| hs.into_iter().map(|h| h.trim().to_ascii_lowercase()).collect());
        Self { allow_cidrs, allow_hosts }
    }

    /// Whether the host name may be fetched at all (the host allowlist).
    pub fn check_host(&self, host: &str) -> Result<(), JobError> {
        match &self.allow_hosts {
            Some(hosts) if !hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) => {
                Err(JobError::new(ErrorKind::BlockedUrl, format!("host {host} is not in the allowlist")))
            }
            _ => Ok(()),
        }
    }

    /// Whether the worker may connect to `ip`.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), JobError> {
        let canonical = embedded_v4(ip).map(IpAddr::V4).unwrap_or(ip);
        if self.allow_cidrs.iter().any(|net| net.contains(&ip) || net.contains(&canonical)) {
            return Ok(());
        }
        match forbidden(ip) {
            Some(why) => Err(JobError::new(ErrorKind::BlockedUrl, format!("address {ip} is {why}"))),
            None => Ok(()),
        }
    }
}

/// The IPv4 address an IPv6 address stands for, in the forms that route to
/// (or are treated by stacks as) that IPv4 address.
fn embedded_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    let s = v6.segments();
    let last32 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    // IPv4-compatible ::a.b.c.d (deprecated, still accepted by some stacks);
    // `::` and `::1` are their own IPv6 addresses.
    if s[..6].iter().all(|&x| x == 0) && !(s[6] == 0 && s[7] <= 1) {
        return Some(last32);
    }
    // NAT64 well-known prefix 64:ff9b::/96.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6].iter().all(|&x| x == 0) {
        return Some(last32);
    }
    // 6to4 2002:AABB:CCDD::/48 carries AA.BB.CC.DD.
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8));
    }
    None
}

/// Why the worker must not connect to `ip`, if it must not.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(ip) {
            Some(v4) => forbidden_v4(v4).or_else(|| forbidden_v6(v6)),
            None => forbidden_v6(v6),
        },
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
    (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    const RANGES: &[([u8; 4], u32, &str)] = &[
        ([0, 0, 0, 0], 8, "unspecified (\"this network\")"),
        ([10, 0, 0, 0], 8, "private"),
        ([100, 64, 0, 0], 10, "shared address space (carrier-grade NAT)"),
        ([127, 0, 0, 0], 8, "loopback"),
        ([169, 254, 0, 0], 16, "link-local (cloud metadata)"),
        ([172, 16, 0, 0], 12, "private"),
        ([192, 0, 0, 0], 24, "reserved for IETF protocol assignments"),
        ([192, 0, 2, 0], 24, "documentation"),
        ([192, 88, 99, 0], 24, "6to4 relay anycast"),
        ([192, 168, 0, 0], 16, "private"),
        ([198, 18, 0, 0], 15, "benchmarking"),
        ([198, 51, 100, 0], 24, "documentation"),
        ([203, 0, 113, 0], 24, "documentation"),
        ([224, 0, 0, 0], 4, "multicast"),
        ([240, 0, 0, 0], 4, "reserved (or broadcast)"),
    ];
    RANGES.iter().find(|(net, prefix, _)| in_v4(ip, *net, *prefix)).map(|(_, _, why)| *why)
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, prefix: u32) -> bool {
    let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix) };
    (u128::from(ip) & mask) == (u128::from(net) & mask)
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    const RANGES: &[(Ipv6Addr, u32, &str)] = &[
        // Mapped and compatible forms whose IPv4 part was allowed are still
        // odd enough to refuse unless allowlisted.
        (Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96, "an IPv4-mapped address"),
        (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 96, "an IPv4-compatible address"),
        (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48, "local-use NAT64"),
        (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64, "discard-only"),
        (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32, "documentation"),
        (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23, "reserved for IETF protocol assignments"),
        (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20, "documentation"),
        (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7, "private (unique local)"),
        (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "link-local"),
        (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10, "site-local"),
        (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, "multicast"),
    ];
    RANGES.iter().find(|(net, prefix, _)| in_v6(ip, *net, *prefix)).map(|(_, _, why)| *why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(g: &Guard, s: &str) -> bool {
        let ip: IpAddr = s.parse().expect(s);
        match g.check_ip(ip) {
            Ok(()) => false,
            Err(e) => {
                assert_eq!(e.kind, ErrorKind::BlockedUrl);
                true
            }
        }
    }

    #[test]
    fn every_forbidden_range_is_refused_and_public_addresses_pass() {
        let g = Guard::default();
        let refused = [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.1.2.3",
            "169.254.169.254",
            "169.254.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::ffff:8.8.8.8",
            "::127.0.0.1",
            "::169.254.169.254",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::1",
            "100::1",
            "2001:db8::1",
            "3fff::1",
            "2001::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "ff05::2",
        ];
        for ip in refused {
            assert!(blocked(&g, ip), "{ip} must be refused");
        }
        let allowed =
            ["8.8.8.8", "1.1.1.1", "93.184.216.34", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "2a00::1"];
        for ip in allowed {
            assert!(!blocked(&g, ip), "{ip} is public");
        }
        // Embedded public IPv4 in NAT64/6to4 is fine (it is what it routes to).
        assert!(!blocked(&g, "64:ff9b::808:808"));
        assert!(!blocked(&g, "2002:808:808::1"));
    }

    #[test]
    fn allowlisted_ranges_pass_in_every_spelling() {
        let g = Guard::new(vec!["127.0.0.0/8".parse().expect("cidr")], None);
        assert!(!blocked(&g, "127.0.0.1"));
        assert!(!blocked(&g, "::ffff:127.0.0.1"));
        assert!(blocked(&g, "::1"), "IPv6 loopback is a different range");
        assert!(blocked(&g, "10.0.0.1"));
        assert!(blocked(&g, "169.254.169.254"));
    }

    #[test]
    fn host_allowlist_is_exact_and_case_insensitive() {
        let g = Guard::new(vec![], Some(vec!["Images.Example.com".into()]));
        assert!(g.check_host("images.example.com").is_ok());
        assert_eq!(g.check_host("evil.example.com").map_err(|e| e.kind), Err(ErrorKind::BlockedUrl));
        assert!(Guard::default().check_host("anything").is_ok());
    }

    #[test]
    fn odd_ipv4_spellings_are_normalised_by_the_url_parser_then_refused() {
        // The url crate (WHATWG) normalises these host spellings to 127.0.0.1;
        // the guard sees the normalised address, so none of them slips past.
        let g = Guard::default();
        for raw in [
            "http://0x7f000001/x.png",
            "http://2130706433/x.png",
            "http://0177.0.0.1/x.png",
            "http://127.1/x.png",
            "http://0x7f.0.0.1/x.png",
            "http://[::ffff:7f00:1]/x.png",
            "http://[::1]/x.png",
            "http://0xa9fea9fe/x.png",
        ] {
            let url = url::Url::parse(raw).expect(raw);
            let ip = match url.host() {
                Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
                Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
                other => panic!("{raw}: parsed as {other:?}, not an IP literal"),
            };
            assert!(g.check_ip(ip).is_err(), "{raw} → {ip} must be refused");
        }
    }
}
