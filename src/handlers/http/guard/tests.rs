//! The guard's ranges, forms and refusals.

use super::*;

fn what(ip: &str) -> Option<&'static str> {
    forbidden(ip.parse().expect("an address")).map(|f| f.what)
}

#[test]
fn every_range_of_the_ipv4_registry_is_forbidden_at_both_ends() {
    for (i, r) in V4.iter().enumerate() {
        let last = r.net | u32::MAX.checked_shr(r.len).unwrap_or(0);
        for ip in [r.net, last] {
            let found = forbidden_v4(Ipv4Addr::from(ip)).expect("forbidden");
            // Named by this range, or by a narrower one listed first
            // (the broadcast address is in 240.0.0.0/4 too).
            let earlier = V4[..i].iter().any(|e| {
                e.what == found.what && within(u128::from(ip), u128::from(e.net), e.len, 32)
            });
            assert!(
                found.what == r.what || earlier,
                "{}: {found:?}",
                Ipv4Addr::from(ip)
            );
        }
    }
    for (ip, is) in [
        ("127.0.0.1", "a loopback address"),
        ("10.1.2.3", "a private address"),
        ("172.31.255.255", "a private address"),
        ("192.168.1.1", "a private address"),
        ("169.254.169.254", "a link-local or cloud metadata address"),
        ("100.100.100.200", "a shared (carrier-grade NAT) address"),
        ("168.63.129.16", "a cloud metadata address"),
        ("0.0.0.0", "a \"this network\" address"),
        ("255.255.255.255", "the broadcast address"),
        ("192.0.0.1", "an IETF protocol assignment"),
        ("192.0.0.192", "an IETF protocol assignment"),
        ("198.18.0.1", "a benchmarking address"),
        ("198.19.255.254", "a benchmarking address"),
        ("192.0.2.7", "a documentation address"),
        ("198.51.100.7", "a documentation address"),
        ("203.0.113.7", "a documentation address"),
        ("192.88.99.1", "a 6to4 relay anycast address"),
        ("192.31.196.1", "an AS112 anycast address"),
        ("192.175.48.1", "an AS112 anycast address"),
        ("192.52.193.1", "an AMT anycast address"),
        ("224.0.0.251", "a multicast address"),
        ("239.255.255.250", "a multicast address"),
        ("240.0.0.1", "a reserved address"),
    ] {
        assert_eq!(what(ip), Some(is), "{ip}");
    }
    for ip in [
        "93.184.216.34",
        "8.8.8.8",
        "1.1.1.1",
        "9.255.255.255",
        "11.0.0.0",
        "100.63.255.255",
        "100.128.0.0",
        "126.255.255.255",
        "128.0.0.0",
        "169.253.255.255",
        "172.15.255.255",
        "172.32.0.0",
        "191.255.255.255",
        "192.0.1.0",
        "192.167.255.255",
        "192.169.0.0",
        "198.17.255.255",
        "198.20.0.0",
        "223.255.255.255",
    ] {
        assert_eq!(what(ip), None, "{ip} is public");
    }
}

#[test]
fn every_range_of_the_ipv6_registry_is_forbidden_at_both_ends() {
    for (i, r) in V6.iter().enumerate() {
        let last = r.net | u128::MAX.checked_shr(r.len).unwrap_or(0);
        for ip in [r.net, last] {
            let found = forbidden(IpAddr::V6(Ipv6Addr::from(ip))).expect("forbidden");
            // Named by this range, by a narrower one listed first (:: in
            // ::/3), or judged as the IPv4 address it carries.
            let earlier = V6[..i]
                .iter()
                .any(|e| e.what == found.what && within(ip, e.net, e.len, 128));
            assert!(
                found.what == r.what || earlier || found.carried.is_some(),
                "{}: {found:?} in {}",
                Ipv6Addr::from(ip),
                r.what
            );
        }
    }
    for (ip, is) in [
        ("::1", "a loopback address"),
        ("::", "an unspecified address"),
        ("fd00::1", "a unique-local address"),
        ("fd00:ec2::254", "a unique-local address"),
        ("fe80::1", "a link-local address"),
        ("fec0::1", "a site-local address"),
        ("ff02::1", "a multicast address"),
        ("100::1", "a discard-only address"),
        ("2001:db8::1", "a documentation address"),
        ("3fff::1", "a documentation address"),
        ("2001:2::1", "an IETF protocol assignment"),
        ("2001:1::1", "an IETF protocol assignment"),
        ("2620:4f:8000::1", "an AS112 anycast address"),
        ("5f00::1", "a segment routing (SRv6) address"),
        (
            "64:ff9b:1::808:808",
            "a local-use IPv4/IPv6 translation address",
        ),
        (
            "64:ff9b:1:7f00:1::",
            "a local-use IPv4/IPv6 translation address",
        ),
        ("4000::1", "a reserved address"),
        ("1::1", "a reserved address"),
    ] {
        assert_eq!(what(ip), Some(is), "{ip}");
    }
    for ip in [
        "2606:4700::1111",
        "2a00:1450:4001:80b::200e",
        "2001:4860:4860::8888",
    ] {
        assert_eq!(what(ip), None, "{ip} is public");
    }
}

#[test]
fn ipv6_forms_are_judged_as_the_ipv4_address_they_carry() {
    for (ip, v4, form) in [
        ("::ffff:127.0.0.1", "127.0.0.1", "IPv4-mapped"),
        ("::ffff:10.0.0.1", "10.0.0.1", "IPv4-mapped"),
        ("::127.0.0.1", "127.0.0.1", "IPv4-compatible"),
        ("::169.254.169.254", "169.254.169.254", "IPv4-compatible"),
        ("::ffff:0:127.0.0.1", "127.0.0.1", "IPv4-translated"),
        ("::ffff:0:192.168.0.1", "192.168.0.1", "IPv4-translated"),
        ("2002:7f00:1::1", "127.0.0.1", "6to4"),
        ("2002:a9fe:a9fe::", "169.254.169.254", "6to4"),
        ("2002:c000:201::1", "192.0.2.1", "6to4"),
        ("64:ff9b::7f00:1", "127.0.0.1", "NAT64"),
        ("64:ff9b::a9fe:a9fe", "169.254.169.254", "NAT64"),
        ("64:ff9b::c612:1", "198.18.0.1", "NAT64"),
        // Teredo: server 65.54.227.120, client 127.0.0.1 stored inverted.
        (
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
            "127.0.0.1",
            "Teredo",
        ),
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "10.0.0.1", "Teredo"),
    ] {
        let found = forbidden(ip.parse().expect("an address"))
            .unwrap_or_else(|| panic!("{ip} must be forbidden"));
        assert_eq!(
            found.carried,
            Some((v4.parse().expect("IPv4"), form)),
            "{ip}"
        );
        assert_eq!(Some(found.what), what(v4), "{ip}");
    }
    // The same forms of public addresses are public.
    for ip in [
        "::ffff:8.8.8.8",
        "::8.8.8.8",
        "::ffff:0:8.8.8.8",
        "2002:808:808::1",
        "64:ff9b::808:808",
        "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
    ] {
        assert_eq!(what(ip), None, "{ip} carries a public address");
    }
}

#[test]
fn a_refusal_names_the_range_the_rfc_and_the_carried_address() {
    let url: url::Url = "http://[2002:7f00:1::1]:8080/x".parse().expect("a URL");
    let refused = check_literal(&url).expect_err("refused");
    assert_eq!(
        refused.to_string(),
        "[2002:7f00:1::1] is a loopback address, as the IPv4 address 127.0.0.1 its 6to4 \
         form carries (2002:7f00:1::1, RFC 1122): per-job URLs may not reach it unless the \
         queue sets allow_private = true"
    );
}

#[test]
fn literal_hosts_are_checked_in_every_spelling() {
    for url in [
        "http://127.0.0.1:8080/x",
        "http://[::1]/",
        "http://2130706433/",
        "http://0x7f.1/",
        "https://169.254.169.254/latest/meta-data/",
        "http://[::127.0.0.1]/",
        "http://[::ffff:0:127.0.0.1]/",
        "http://[2002:7f00:1::1]/",
        "http://[64:ff9b::10.0.0.1]/",
        "http://[64:ff9b:1::a00:1]/",
        "http://192.0.0.170/",
        "http://198.18.0.1/",
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
    assert_eq!(refused.why.what, "a loopback address");
    let mut open = Resolver::default();
    let addrs: Vec<SocketAddr> = open.call(name).await.expect("resolved").collect();
    assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
}
