//! Names to addresses for the egress proxy: the operator's own table
//! (`[network] resolve`, trusted like an explicit rule: tests map their
//! names to loopback upstreams with it) before the host's resolver, which
//! is only ever asked about names the policy allowed.

use std::collections::BTreeMap;
use std::net::IpAddr;

#[derive(Debug, Default)]
pub struct Resolver {
    table: BTreeMap<String, IpAddr>,
    /// The host's own addresses: refused like private ones.
    host: Vec<IpAddr>,
}

impl Resolver {
    pub fn new(table: BTreeMap<String, IpAddr>) -> Self {
        let table = table
            .into_iter()
            .map(|(k, v)| (k.trim_end_matches('.').to_ascii_lowercase(), v))
            .collect();
        Self {
            table,
            host: host_addresses(),
        }
    }

    pub fn host_addrs(&self) -> &[IpAddr] {
        &self.host
    }

    /// The address of `name` and whether it came from the operator's table.
    pub async fn resolve(&self, name: &str, port: u16) -> Result<(IpAddr, bool), String> {
        let key = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(addr) = self.table.get(&key) {
            return Ok((*addr, true));
        }
        let mut found = tokio::net::lookup_host((key.as_str(), port))
            .await
            .map_err(|e| format!("cannot resolve {key}: {e}"))?;
        found
            .next()
            .map(|a| (a.ip(), false))
            .ok_or_else(|| format!("{key} has no address"))
    }
}

/// Every address of the host's interfaces.
fn host_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below; each entry is read
    // only while the list lives.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return out;
        }
        let mut cur = list;
        while !cur.is_null() {
            let addr = (*cur).ifa_addr;
            if !addr.is_null() {
                match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let a = &*(addr as *const libc::sockaddr_in);
                        out.push(IpAddr::from(u32::from_be(a.sin_addr.s_addr).to_be_bytes()));
                    }
                    libc::AF_INET6 => {
                        let a = &*(addr as *const libc::sockaddr_in6);
                        out.push(IpAddr::from(a.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    out
}
