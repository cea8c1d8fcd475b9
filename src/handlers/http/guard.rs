//! The SSRF guard of per-job URLs: a job may not make the daemon reach
//! addresses of its own network (loopback, private, link-local, unique-local,
//! cloud metadata) unless the queue allows it.
//!
//! The check is made on the address connected to: a resolver that refuses
//! names resolving to such an address (so a name pointing at 127.0.0.1 is
//! refused too, and no second lookup can differ from the checked one), and a
//! check of hosts written as IP addresses, which reach no resolver.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;

/// Why a URL may not be requested.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{host} is {what} ({addr}): per-job URLs may not reach it unless the queue sets allow_private = true"
)]
pub(crate) struct Refused {
    pub(crate) host: String,
    pub(crate) addr: IpAddr,
    pub(crate) what: &'static str,
}

/// What an address is, if a job may not reach it.
pub(crate) fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => forbidden_v4(v4),
            None => forbidden_v6(v6),
        },
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_private() {
        Some("a private address")
    } else if ip.is_link_local() {
        // 169.254.169.254 is the metadata service of most clouds.
        Some("a link-local or cloud metadata address")
    } else if ip.is_unspecified() || a == 0 {
        Some("an unspecified address")
    } else if a == 100 && (64..128).contains(&b) {
        // Shared address space; 100.100.100.200 is a cloud's metadata service.
        Some("a shared (carrier-grade NAT) address")
    } else if ip == Ipv4Addr::new(168, 63, 129, 16) {
        Some("a cloud metadata address")
    } else if ip.is_broadcast() || ip.is_multicast() || a >= 240 {
        Some("a broadcast, multicast or reserved address")
    } else {
        None
    }
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_unspecified() {
        Some("an unspecified address")
    } else if first & 0xfe00 == 0xfc00 {
        Some("a unique-local address")
    } else if first & 0xffc0 == 0xfe80 {
        Some("a link-local address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if ip.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64: an IPv4 address in disguise.
        let [.., c, d] = ip.segments();
        forbidden_v4(Ipv4Addr::new(
            (c >> 8) as u8,
            c as u8,
            (d >> 8) as u8,
            d as u8,
        ))
    } else {
        None
    }
}

/// Refuses a URL whose host is written as a forbidden IP address (such a
/// host reaches no resolver).
pub(crate) fn check_literal(url: &url::Url) -> Result<(), Refused> {
    let ip = match url.host() {
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        _ => return Ok(()),
    };
    match forbidden(ip) {
        Some(what) => Err(Refused {
            host: url.host_str().unwrap_or_default().to_owned(),
            addr: ip,
            what,
        }),
        None => Ok(()),
    }
}

/// The system's resolver (`getaddrinfo`, on tokio's blocking threads),
/// which, when `refuse_private`, refuses a name any of whose addresses is
/// forbidden: the connection is made to exactly the addresses returned.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Resolver {
    pub(crate) refuse_private: bool,
}

type Resolved = Result<std::vec::IntoIter<SocketAddr>, Box<dyn std::error::Error + Send + Sync>>;

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Resolved> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let refuse_private = self.refuse_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some((addr, what)) = addrs
                .iter()
                .find_map(|a| forbidden(a.ip()).map(|what| (a.ip(), what)))
                .filter(|_| refuse_private)
            {
                return Err(Box::new(Refused { host, addr, what }) as _);
            }
            Ok(addrs.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_of_the_network_are_forbidden_and_others_not() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "168.63.129.16",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            let ip: IpAddr = ip.parse().expect("an address");
            assert!(forbidden(ip).is_some(), "{ip} must be forbidden");
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "64:ff9b::808:808",
        ] {
            let ip: IpAddr = ip.parse().expect("an address");
            assert_eq!(forbidden(ip), None, "{ip} is public");
        }
    }

    #[test]
    fn literal_hosts_are_checked_in_every_spelling() {
        for url in [
            "http://127.0.0.1:8080/x",
            "http://[::1]/",
            "http://2130706433/",
            "http://0x7f.1/",
            "https://169.254.169.254/latest/meta-data/",
        ] {
            let url: url::Url = url.parse().expect("a URL");
            assert!(check_literal(&url).is_err(), "{url} must be refused");
        }
        let url: url::Url = "https://example.com/hook".parse().expect("a URL");
        assert!(check_literal(&url).is_ok());
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused_when_asked() {
        use tower_service::Service;
        let name: Name = "localhost".parse().expect("a name");
        let mut guarded = Resolver {
            refuse_private: true,
        };
        let refused = match guarded.call(name.clone()).await {
            Ok(_) => panic!("localhost resolved"),
            Err(e) => e,
        };
        let refused = refused.downcast_ref::<Refused>().expect("our refusal");
        assert_eq!(refused.what, "a loopback address");
        let mut open = Resolver::default();
        let addrs: Vec<SocketAddr> = open.call(name).await.expect("resolved").collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }
}
