//! A session's egress policy and the decision for one destination.
//!
//! Rules are `HOST[:PORT]`: a domain (`api.openai.com`), a wildcard over
//! subdomains (`*.anthropic.com`: `a.anthropic.com`, not `anthropic.com`),
//! `*` (any name), an address (`1.2.3.4`, `[2001:db8::1]`) or a CIDR
//! (`10.0.0.0/8`, `fd00::/8`). Deny rules win over allow rules. A name is
//! checked before it is looked up; the address it resolves to is checked
//! again: private, loopback, link-local (cloud metadata), multicast and the
//! host's own addresses are refused unless an allow rule names that address
//! (or its range) itself.

use std::net::IpAddr;

use crate::error::{Error, Result};

/// Most rules in one list.
pub const MAX_RULES: usize = 256;

pub use crate::types::{NetworkMode as Mode, NetworkPolicy};

/// Check every rule; a policy with rules but mode `none` is refused as a
/// likely mistake.
pub fn validate(policy: &NetworkPolicy) -> Result<()> {
    for (list, rules) in [("allow", &policy.allow), ("deny", &policy.deny)] {
        if rules.len() > MAX_RULES {
            return Err(Error::InvalidArgument(format!(
                "network.{list} has {} rules; at most {MAX_RULES}",
                rules.len()
            )));
        }
        for r in rules {
            Rule::parse(r).map_err(|why| {
                Error::InvalidArgument(format!("network.{list}: {r:?} is not a rule: {why}"))
            })?;
        }
    }
    if policy.mode == Mode::None && !policy.allow.is_empty() {
        return Err(Error::InvalidArgument(
            "network.allow is set but network.mode is \"none\" (set mode = \"proxy\")".into(),
        ));
    }
    Ok(())
}

/// One parsed rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Any,
    Name(String),
    /// `*.suffix`: the suffix with its leading dot.
    Suffix(String),
    Net(IpAddr, u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub host: Host,
    pub port: Option<u16>,
}

impl Rule {
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let text = text.trim();
        if text.is_empty() || text.len() > 260 {
            return Err("empty or too long".into());
        }
        // [v6]:port, [v6], v6/len, host:port, host
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (inner, after) = rest.split_once(']').ok_or("unclosed '['")?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err("junk after ']'".into()),
            };
            (inner.to_owned(), port)
        } else if text.matches(':').count() == 1 {
            let (h, p) = text.split_once(':').ok_or("no port")?;
            (h.to_owned(), Some(p))
        } else {
            (text.to_owned(), None)
        };
        let port = port
            .map(|p| p.parse::<u16>().map_err(|_| format!("bad port {p:?}")))
            .transpose()?
            .filter(|p| *p != 0);
        let host = if host == "*" {
            Host::Any
        } else if let Some((addr, len)) = host.split_once('/') {
            let addr: IpAddr = addr.parse().map_err(|_| format!("bad address {addr:?}"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let len: u8 = len
                .parse()
                .ok()
                .filter(|l| *l <= max)
                .ok_or(format!("bad prefix length {len:?}"))?;
            Host::Net(addr, len)
        } else if let Ok(addr) = host.parse::<IpAddr>() {
            Host::Net(addr, if addr.is_ipv4() { 32 } else { 128 })
        } else if let Some(suffix) = host.strip_prefix("*.") {
            check_name(suffix)?;
            Host::Suffix(format!(".{}", suffix.to_ascii_lowercase()))
        } else {
            check_name(&host)?;
            Host::Name(host.to_ascii_lowercase())
        };
        Ok(Self { host, port })
    }

    fn port_matches(&self, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
    }

    fn matches_name(&self, name: &str, port: u16) -> bool {
        self.port_matches(port)
            && match &self.host {
                Host::Any => true,
                Host::Name(n) => n == name,
                Host::Suffix(s) => name.ends_with(s.as_str()) && name.len() > s.len(),
                Host::Net(..) => false,
            }
    }

    fn matches_addr(&self, addr: IpAddr, port: u16) -> bool {
        self.port_matches(port)
            && match &self.host {
                Host::Net(net, len) => in_net(addr, *net, *len),
                _ => false,
            }
    }
}

fn check_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("bad host name {name:?}"))
    }
}

fn in_net(addr: IpAddr, net: IpAddr, len: u8) -> bool {
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V4(_)) => a
            .to_ipv4_mapped()
            .is_some_and(|v4| in_net(IpAddr::V4(v4), net, len)),
        _ => false,
    }
}

/// Addresses nothing reaches without a rule naming them: private, shared
/// (CGNAT), loopback, link-local (cloud metadata at 169.254.169.254),
/// multicast, unspecified, broadcast, documentation, and IPv6's unique
/// local and link-local ranges.
pub fn is_special(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_multicast()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_documentation()
                || in_net(addr, "100.64.0.0".parse().expect("literal"), 10)
                || in_net(addr, "0.0.0.0".parse().expect("literal"), 8)
                || in_net(addr, "240.0.0.0".parse().expect("literal"), 4)
        }
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => is_special(IpAddr::V4(v4)),
            None => {
                a.is_loopback()
                    || a.is_unspecified()
                    || a.is_multicast()
                    || in_net(addr, "fc00::".parse().expect("literal"), 7)
                    || in_net(addr, "fe80::".parse().expect("literal"), 10)
                    || in_net(addr, "2001:db8::".parse().expect("literal"), 32)
            }
        },
    }
}

/// A policy ready to decide.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub mode: Mode,
    allow: Vec<Rule>,
    deny: Vec<Rule>,
}

/// Why a destination is refused (said to the program and logged).
pub type Refusal = String;

impl Compiled {
    pub fn new(policy: &NetworkPolicy) -> Result<Self> {
        validate(policy)?;
        let parse = |rules: &[String]| {
            rules
                .iter()
                .filter_map(|r| Rule::parse(r).ok())
                .collect::<Vec<_>>()
        };
        Ok(Self {
            mode: policy.mode,
            allow: parse(&policy.allow),
            deny: parse(&policy.deny),
        })
    }

    /// The decision on a name, before any lookup.
    pub fn check_name(&self, name: &str, port: u16) -> std::result::Result<(), Refusal> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if self.mode == Mode::None {
            return Err("the session has no network access".into());
        }
        if self.deny.iter().any(|r| r.matches_name(&name, port)) {
            return Err(format!("{name}:{port} is on the deny list"));
        }
        if self.allow.iter().any(|r| r.matches_name(&name, port)) {
            Ok(())
        } else {
            Err(format!("{name}:{port} is not on the allow list"))
        }
    }

    /// The decision on an address: a literal the program asked for, or
    /// what an allowed name resolved to (`trusted`: the operator's own
    /// resolve table, which stands for an explicit rule).
    pub fn check_addr(
        &self,
        addr: IpAddr,
        port: u16,
        by_name: bool,
        trusted: bool,
        host_addrs: &[IpAddr],
    ) -> std::result::Result<(), Refusal> {
        if self.mode == Mode::None {
            return Err("the session has no network access".into());
        }
        if self.deny.iter().any(|r| r.matches_addr(addr, port)) {
            return Err(format!("{addr}:{port} is on the deny list"));
        }
        let named = self.allow.iter().any(|r| r.matches_addr(addr, port));
        if !by_name && !named {
            return Err(format!("{addr}:{port} is not on the allow list"));
        }
        let special = is_special(addr) || host_addrs.contains(&addr);
        if special && !named && !trusted {
            return Err(format!(
                "{addr} is a private, loopback, link-local or host address; only a rule naming it allows it"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str]) -> Compiled {
        Compiled::new(&NetworkPolicy {
            mode: Mode::Proxy,
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    #[test]
    fn rules_parse_or_name_the_problem() {
        for ok in [
            "api.openai.com",
            "*.anthropic.com:443",
            "*",
            "10.0.0.0/8",
            "[::1]:80",
            "1.2.3.4",
            "fd00::/8",
        ] {
            Rule::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "a..b",
            "x:99999",
            "10.0.0.0/33",
            "[::1",
            "bad name",
            "*.",
            "a:b:c",
        ] {
            assert!(Rule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_wildcards_ports_and_deny() {
        let p = policy(
            &["api.openai.com:443", "*.anthropic.com"],
            &["evil.anthropic.com"],
        );
        assert!(p.check_name("api.openai.com", 443).is_ok());
        assert!(p.check_name("API.OpenAI.com.", 443).is_ok());
        assert!(p.check_name("api.openai.com", 80).is_err());
        assert!(p.check_name("x.api.openai.com", 443).is_err());
        assert!(p.check_name("claude.anthropic.com", 8443).is_ok());
        assert!(
            p.check_name("anthropic.com", 443).is_err(),
            "a wildcard is subdomains only"
        );
        assert!(
            p.check_name("evil.anthropic.com", 443)
                .unwrap_err()
                .contains("deny")
        );
        assert!(policy(&[], &[]).check_name("anything", 1).is_err());
    }

    #[test]
    fn special_addresses_need_a_rule_naming_them() {
        let p = policy(&["*", "10.1.2.3:5432"], &["203.0.113.0/24"]);
        let host = ["198.51.100.7".parse().unwrap()];
        let check =
            |a: &str, port, by_name| p.check_addr(a.parse().unwrap(), port, by_name, false, &host);
        assert!(check("93.184.216.34", 443, true).is_ok());
        assert!(
            check("93.184.216.34", 443, false).is_err(),
            "a literal needs an address rule"
        );
        for special in [
            "127.0.0.1",
            "169.254.169.254",
            "10.0.0.1",
            "192.168.1.1",
            "::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "100.64.0.1",
        ] {
            assert!(check(special, 80, true).is_err(), "{special}");
        }
        assert!(
            check("198.51.100.7", 80, true).is_err(),
            "the host's own address"
        );
        assert!(check("10.1.2.3", 5432, false).is_ok(), "named by a rule");
        assert!(check("10.1.2.3", 5433, false).is_err());
        assert!(
            check("203.0.113.9", 443, true)
                .unwrap_err()
                .contains("deny")
        );
        assert!(
            p.check_addr("127.0.0.1".parse().unwrap(), 80, true, true, &[])
                .is_ok(),
            "operator's table"
        );
    }

    #[test]
    fn none_allows_nothing_and_rules_without_proxy_are_refused() {
        let none = Compiled::new(&NetworkPolicy::default()).unwrap();
        assert!(none.check_name("a.b", 1).is_err());
        let bad = NetworkPolicy {
            mode: Mode::None,
            allow: vec!["a.b".into()],
            deny: vec![],
        };
        assert!(validate(&bad).is_err());
    }
}
