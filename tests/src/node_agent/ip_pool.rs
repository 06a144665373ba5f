//! Pod IPs on loopback. Linux routes all of 127.0.0.0/8 to `lo`, so a process can bind its pod
//! IP without any network setup, and two pods can both listen on the same port.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidBase {
    #[error("invalid pod IP base {0:?}: expected one to three octets such as 127.1")]
    Syntax(String),
    #[error("invalid pod IP base {0:?}: pod IPs must lie in 127.0.0.0/8 so that processes can bind them")]
    NotLoopback(String),
}

/// Hands out addresses `BASE.0.2`, `BASE.0.3`, … round-robin, so that a freed address is not
/// reused at once (a client of the old pod should not reach a new one by mistake).
#[derive(Debug, Clone)]
pub struct IpPool {
    prefix: Vec<u8>,
    /// The host part of the next address to try; it counts through `first..=last`.
    next: u32,
    first: u32,
    last: u32,
    in_use: BTreeSet<u32>,
}

impl IpPool {
    /// A pool under `base`, one to three leading octets (`127.1` gives 127.1.0.2 – 127.1.255.254).
    pub fn new(base: &str) -> Result<Self, InvalidBase> {
        let prefix: Vec<u8> = base
            .split('.')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|_| InvalidBase::Syntax(base.to_string()))?;
        if prefix.is_empty() || prefix.len() > 3 {
            return Err(InvalidBase::Syntax(base.to_string()));
        }
        if prefix[0] != 127 {
            return Err(InvalidBase::NotLoopback(base.to_string()));
        }
        let host_bits = 8 * (4 - prefix.len() as u32);
        // .0 and .1 of the first block stay free (network and "gateway"), and so does the top
        // address (broadcast), as a CNI plugin would leave them.
        let last = (1u32 << host_bits) - 2;
        Ok(Self { prefix, next: 2, first: 2, last, in_use: BTreeSet::new() })
    }

    /// A free address, or `None` when every address is taken.
    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        let size = self.last - self.first + 1;
        for _ in 0..size {
            let host = self.next;
            self.next = if host >= self.last { self.first } else { host + 1 };
            if self.in_use.insert(host) {
                return Some(self.address(host));
            }
        }
        None
    }

    /// Returns `ip` to the pool; an address the pool never gave out is ignored.
    pub fn free(&mut self, ip: Ipv4Addr) {
        let octets = ip.octets();
        if octets[..self.prefix.len()] != self.prefix[..] {
            return;
        }
        let host = octets[self.prefix.len()..].iter().fold(0u32, |acc, o| (acc << 8) | u32::from(*o));
        self.in_use.remove(&host);
    }

    fn address(&self, host: u32) -> Ipv4Addr {
        let mut octets = [0u8; 4];
        octets[..self.prefix.len()].copy_from_slice(&self.prefix);
        let host_bytes = host.to_be_bytes();
        let n = 4 - self.prefix.len();
        octets[self.prefix.len()..].copy_from_slice(&host_bytes[4 - n..]);
        Ipv4Addr::from(octets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_start_at_dot_two_and_are_distinct() {
        let mut pool = IpPool::new("127.1").expect("valid base");
        assert_eq!(pool.allocate(), Some(Ipv4Addr::new(127, 1, 0, 2)));
        assert_eq!(pool.allocate(), Some(Ipv4Addr::new(127, 1, 0, 3)));
    }

    #[test]
    fn a_freed_address_is_not_reused_at_once() {
        let mut pool = IpPool::new("127.1.0").expect("valid base");
        let a = pool.allocate().expect("free address");
        pool.free(a);
        assert_ne!(pool.allocate(), Some(a));
    }

    #[test]
    fn the_pool_wraps_around_and_reports_exhaustion() {
        let mut pool = IpPool::new("127.9.9").expect("valid base");
        let all: Vec<_> = std::iter::from_fn(|| pool.allocate()).collect();
        assert_eq!(all.len(), 253);
        assert_eq!(all.last(), Some(&Ipv4Addr::new(127, 9, 9, 254)));
        pool.free(Ipv4Addr::new(127, 9, 9, 7));
        assert_eq!(pool.allocate(), Some(Ipv4Addr::new(127, 9, 9, 7)));
        assert_eq!(pool.allocate(), None);
    }

    #[test]
    fn addresses_cross_octet_boundaries() {
        let mut pool = IpPool::new("127.1").expect("valid base");
        let ip = (0..255).map(|_| pool.allocate()).last().flatten();
        assert_eq!(ip, Some(Ipv4Addr::new(127, 1, 1, 0)));
    }

    #[test]
    fn the_base_must_be_loopback() {
        assert!(matches!(IpPool::new("10.1"), Err(InvalidBase::NotLoopback(_))));
        assert!(matches!(IpPool::new("127.x"), Err(InvalidBase::Syntax(_))));
        assert!(matches!(IpPool::new("127.1.2.3"), Err(InvalidBase::Syntax(_))));
    }
}
