//! The SSRF guard of per-job URLs: a job may not make the daemon reach
//! addresses of its own network (loopback, private, link-local, unique-local,
//! cloud metadata), nor any other special-use address of the IANA registries
//! (documentation, benchmarking, anycast, reserved), unless the queue allows
//! it. An IPv6 address that carries an IPv4 one (IPv4-mapped, -compatible or
//! -translated, 6to4, NAT64, Teredo) is judged as the IPv4 address.
//!
//! The check is made on the address connected to: a resolver that refuses
//! names resolving to such an address (so a name pointing at 127.0.0.1 is
//! refused too, and no second lookup can differ from the checked one), and a
//! check of hosts written as IP addresses, which reach no resolver.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;

/// Why a URL may not be requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    pub(crate) host: String,
    pub(crate) addr: IpAddr,
    pub(crate) why: Forbidden,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Forbidden { what, rfc, carried } = self.why;
        write!(f, "{} is {what}", self.host)?;
        if let Some((v4, form)) = carried {
            write!(f, ", as the IPv4 address {v4} its {form} form carries")?;
        }
        write!(
            f,
            " ({}, {rfc}): per-job URLs may not reach it unless the queue sets allow_private = true",
            self.addr
        )
    }
}

impl std::error::Error for Refused {}

/// What an address is, if a job may not reach it: the range's name, the
/// RFC that sets it apart and, for an IPv6 form that carries an IPv4
/// address, that address and the form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Forbidden {
    pub(crate) what: &'static str,
    pub(crate) rfc: &'static str,
    pub(crate) carried: Option<(Ipv4Addr, &'static str)>,
}

/// A range of addresses: the first address's bits, and the prefix length.
struct Range<T> {
    net: T,
    len: u32,
    what: &'static str,
    rfc: &'static str,
}

const fn v4(net: [u8; 4], len: u32, what: &'static str, rfc: &'static str) -> Range<u32> {
    Range {
        net: u32::from_be_bytes(net),
        len,
        what,
        rfc,
    }
}

const fn v6(net: [u16; 8], len: u32, what: &'static str, rfc: &'static str) -> Range<u128> {
    let mut bits = 0u128;
    let mut i = 0;
    while i < 8 {
        bits = (bits << 16) | net[i] as u128;
        i += 1;
    }
    Range {
        net: bits,
        len,
        what,
        rfc,
    }
}

/// Whether `addr` is in the range `net/len` of a `width`-bit address space.
fn within(addr: u128, net: u128, len: u32, width: u32) -> bool {
    let shift = width - len;
    len == 0 || (addr >> shift) == (net >> shift)
}

/// Every range of the IANA IPv4 Special-Purpose Address Registry
/// (iana.org/assignments/iana-ipv4-special-registry, as of 2025), with the
/// multicast space and one cloud's metadata address beside it. A job may
/// reach none of them: not only the private ones, but also those meant for
/// documentation, benchmarks, anycast services and protocol use. The first
/// range an address falls in names it.
const V4: &[Range<u32>] = &[
    v4([0, 0, 0, 0], 8, "a \"this network\" address", "RFC 791"),
    v4([10, 0, 0, 0], 8, "a private address", "RFC 1918"),
    v4(
        [100, 64, 0, 0],
        10,
        "a shared (carrier-grade NAT) address",
        "RFC 6598",
    ),
    v4([127, 0, 0, 0], 8, "a loopback address", "RFC 1122"),
    // 169.254.169.254 is the metadata service of most clouds.
    v4(
        [169, 254, 0, 0],
        16,
        "a link-local or cloud metadata address",
        "RFC 3927",
    ),
    v4([172, 16, 0, 0], 12, "a private address", "RFC 1918"),
    // With 192.0.0.0/29 (DS-Lite, RFC 7335), 192.0.0.8 (RFC 7600), the PCP
    // and TURN anycasts (RFC 7723, RFC 8155), 192.0.0.170-171 (RFC 8880),
    // and 192.0.0.192, a cloud's metadata service.
    v4(
        [192, 0, 0, 0],
        24,
        "an IETF protocol assignment",
        "RFC 6890",
    ),
    v4([192, 0, 2, 0], 24, "a documentation address", "RFC 5737"),
    v4(
        [192, 31, 196, 0],
        24,
        "an AS112 anycast address",
        "RFC 7535",
    ),
    v4([192, 52, 193, 0], 24, "an AMT anycast address", "RFC 7450"),
    v4(
        [192, 88, 99, 0],
        24,
        "a 6to4 relay anycast address",
        "RFC 7526",
    ),
    v4([192, 168, 0, 0], 16, "a private address", "RFC 1918"),
    v4(
        [192, 175, 48, 0],
        24,
        "an AS112 anycast address",
        "RFC 7534",
    ),
    v4([198, 18, 0, 0], 15, "a benchmarking address", "RFC 2544"),
    v4([198, 51, 100, 0], 24, "a documentation address", "RFC 5737"),
    v4([203, 0, 113, 0], 24, "a documentation address", "RFC 5737"),
    v4([224, 0, 0, 0], 4, "a multicast address", "RFC 5771"),
    v4([255, 255, 255, 255], 32, "the broadcast address", "RFC 919"),
    v4([240, 0, 0, 0], 4, "a reserved address", "RFC 1112"),
    // Not in the registry: Azure's metadata and DNS service, a public address.
    v4([168, 63, 129, 16], 32, "a cloud metadata address", "Azure"),
];

/// Every range of the IANA IPv6 Special-Purpose Address Registry
/// (iana.org/assignments/iana-ipv6-special-registry, as of 2025) that
/// carries no IPv4 address, with the multicast and deprecated site-local
/// spaces beside it. The forms that carry one (IPv4-mapped,
/// IPv4-compatible, IPv4-translated, 6to4, NAT64's well-known prefix,
/// Teredo) are judged as that IPv4 address, in [`carried_v4`], before
/// these.
const V6: &[Range<u128>] = &[
    v6(
        [0, 0, 0, 0, 0, 0, 0, 0],
        128,
        "an unspecified address",
        "RFC 4291",
    ),
    v6(
        [0, 0, 0, 0, 0, 0, 0, 1],
        128,
        "a loopback address",
        "RFC 4291",
    ),
    // NAT64 behind this network's own translator: where its IPv4 address
    // sits depends on that translator's prefix length, unknown here.
    v6(
        [0x64, 0xff9b, 1, 0, 0, 0, 0, 0],
        48,
        "a local-use IPv4/IPv6 translation address",
        "RFC 8215",
    ),
    v6(
        [0x100, 0, 0, 0, 0, 0, 0, 0],
        64,
        "a discard-only address",
        "RFC 6666",
    ),
    v6(
        [0x100, 0, 0, 1, 0, 0, 0, 0],
        64,
        "a dummy address",
        "RFC 9780",
    ),
    // With the benchmarking (RFC 5180), ORCHID (RFC 7343) and AS112, AMT,
    // PCP and TURN anycast (RFC 7534, 7450, 7723, 8155) assignments in it.
    v6(
        [0x2001, 0, 0, 0, 0, 0, 0, 0],
        23,
        "an IETF protocol assignment",
        "RFC 2928",
    ),
    v6(
        [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],
        32,
        "a documentation address",
        "RFC 3849",
    ),
    v6(
        [0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0],
        48,
        "an AS112 anycast address",
        "RFC 7534",
    ),
    v6(
        [0x3fff, 0, 0, 0, 0, 0, 0, 0],
        20,
        "a documentation address",
        "RFC 9637",
    ),
    v6(
        [0x5f00, 0, 0, 0, 0, 0, 0, 0],
        16,
        "a segment routing (SRv6) address",
        "RFC 9602",
    ),
    v6(
        [0xfc00, 0, 0, 0, 0, 0, 0, 0],
        7,
        "a unique-local address",
        "RFC 4193",
    ),
    v6(
        [0xfe80, 0, 0, 0, 0, 0, 0, 0],
        10,
        "a link-local address",
        "RFC 4291",
    ),
    v6(
        [0xfec0, 0, 0, 0, 0, 0, 0, 0],
        10,
        "a site-local address",
        "RFC 3879",
    ),
    v6(
        [0xff00, 0, 0, 0, 0, 0, 0, 0],
        8,
        "a multicast address",
        "RFC 4291",
    ),
    // Beyond the global unicast space nothing is assigned.
    v6(
        [0, 0, 0, 0, 0, 0, 0, 0],
        3,
        "a reserved address",
        "RFC 4291",
    ),
    v6(
        [0x4000, 0, 0, 0, 0, 0, 0, 0],
        2,
        "a reserved address",
        "RFC 4291",
    ),
    v6(
        [0x8000, 0, 0, 0, 0, 0, 0, 0],
        1,
        "a reserved address",
        "RFC 4291",
    ),
];

/// What an address is, if a job may not reach it.
pub(crate) fn forbidden(ip: IpAddr) -> Option<Forbidden> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => match carried_v4(v6) {
            // Judged as the IPv4 address it carries, whatever its range.
            Some((v4, form)) => forbidden_v4(v4).map(|f| Forbidden {
                carried: Some((v4, form)),
                ..f
            }),
            None => forbidden_v6(v6),
        },
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<Forbidden> {
    let bits = u128::from(u32::from(ip));
    V4.iter()
        .find(|r| within(bits, u128::from(r.net), r.len, 32))
        .map(|r| Forbidden {
            what: r.what,
            rfc: r.rfc,
            carried: None,
        })
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<Forbidden> {
    let bits = u128::from(ip);
    V6.iter()
        .find(|r| within(bits, r.net, r.len, 128))
        .map(|r| Forbidden {
            what: r.what,
            rfc: r.rfc,
            carried: None,
        })
}

/// The IPv4 address an IPv6 form carries, and the form's name: such an
/// address reaches the IPv4 one (through the host's own stack, a
/// translator or a relay), so it is judged as that address.
fn carried_v4(ip: Ipv6Addr) -> Option<(Ipv4Addr, &'static str)> {
    let bits = u128::from(ip);
    let low = Ipv4Addr::from(bits as u32);
    let s = ip.segments();
    match s {
        // ::ffff:a.b.c.d (RFC 4291)
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some((low, "IPv4-mapped")),
        // ::ffff:0:a.b.c.d, SIIT (RFC 2765)
        [0, 0, 0, 0, 0xffff, 0, _, _] => Some((low, "IPv4-translated")),
        // ::a.b.c.d, deprecated (RFC 4291); :: and ::1 are what they are.
        [0, 0, 0, 0, 0, 0, _, _] if bits > 1 => Some((low, "IPv4-compatible")),
        // 64:ff9b::a.b.c.d, NAT64's well-known prefix (RFC 6052)
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some((low, "NAT64")),
        // 2002:AABB:CCDD::/48 (RFC 3056)
        [0x2002, hi, lo, ..] => Some((
            Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)),
            "6to4",
        )),
        // 2001:0:SERVER:flags:port:~CLIENT (RFC 4380): the client, which
        // the address reaches, is stored inverted.
        [0x2001, 0, ..] => Some((Ipv4Addr::from(!(bits as u32)), "Teredo")),
        _ => None,
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
        Some(why) => Err(Refused {
            host: url.host_str().unwrap_or_default().to_owned(),
            addr: ip,
            why,
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
            if let Some((addr, why)) = addrs
                .iter()
                .find_map(|a| forbidden(a.ip()).map(|why| (a.ip(), why)))
                .filter(|_| refuse_private)
            {
                return Err(Box::new(Refused { host, addr, why }) as _);
            }
            Ok(addrs.into_iter())
        })
    }
}

#[cfg(test)]
mod tests;
