//! Who the client is: the TCP peer, unless that peer is a reverse proxy listed in
//! `server.trusted_proxies`; then the address that proxy forwarded, taken from the one
//! header `server.client_ip_header` names (`X-Forwarded-For` or `Forwarded`).
//!
//! The forwarded list is read from the right: each trusted proxy appends the address it
//! received the request from, so the rightmost address that is not a trusted proxy is
//! the client. Anything left of it was written by the client and is never believed. A
//! request from an untrusted peer is taken at its TCP address, whatever it claims.

use std::net::{IpAddr, SocketAddr};

use actix_web::http::header::HeaderMap;
use actix_web::HttpRequest;

use crate::cidr::{any_contains, Cidr};
use crate::config::ClientIpHeader;
use crate::server::AppState;

/// Hops read from a forwarded list at most; a longer list is cut at its left.
const MAX_HOPS: usize = 64;

/// The client address of a request, as the per-address limits, the admin lockout and
/// the logs see it.
pub fn client_ip(req: &HttpRequest, st: &AppState) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    let server = &st.config.server;
    Some(resolve(
        peer,
        req.headers(),
        &server.trusted_proxies,
        server.client_ip_header,
    ))
}

/// The client behind `peer`, given the request's headers and the trusted proxies.
pub fn resolve(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[Cidr],
    header: ClientIpHeader,
) -> IpAddr {
    let peer = peer.to_canonical();
    if !any_contains(trusted, peer) {
        return peer;
    }
    let hops = match header {
        ClientIpHeader::XForwardedFor => forwarded_for_hops(headers),
        ClientIpHeader::Forwarded => forwarded_hops(headers),
    };
    let mut client = peer;
    for hop in hops.iter().rev().take(MAX_HOPS) {
        // An entry that is not an address ("unknown", an obfuscated name, garbage) ends
        // the walk: nothing left of it can be traced, so the nearest proxy stands in.
        let Some(ip) = hop else { break };
        client = ip.to_canonical();
        if !any_contains(trusted, client) {
            break;
        }
    }
    client
}

/// The `X-Forwarded-For` entries, left to right over all such header lines.
fn forwarded_for_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all("x-forwarded-for")
        .flat_map(|v| {
            let text = v.to_str().unwrap_or("\u{0}");
            text.split(',')
                .map(|s| node_ip(s.trim()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The `for=` nodes of RFC 7239 `Forwarded` elements, left to right.
fn forwarded_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all("forwarded")
        .flat_map(|v| {
            let text = v.to_str().unwrap_or("\u{0}");
            text.split(',')
                .map(|element| {
                    let node = element.split(';').find_map(|pair| {
                        let (k, v) = pair.split_once('=')?;
                        k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
                    });
                    node.and_then(|n| node_ip(n.trim_matches('"')))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]` or `[2001:db8::1]:4711`.
fn node_ip(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = node.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    node.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(lines: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in lines {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn trusted() -> Vec<Cidr> {
        vec!["10.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()]
    }

    const XFF: ClientIpHeader = ClientIpHeader::XForwardedFor;
    const FWD: ClientIpHeader = ClientIpHeader::Forwarded;

    #[test]
    fn untrusted_peers_are_taken_at_their_address() {
        let h = headers(&[("x-forwarded-for", "198.51.100.1")]);
        assert_eq!(
            resolve(ip("203.0.113.5"), &h, &trusted(), XFF),
            ip("203.0.113.5")
        );
        assert_eq!(resolve(ip("10.0.0.2"), &h, &[], XFF), ip("10.0.0.2"));
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        // the client forged "1.1.1.1"; the proxy appended what it saw
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 198.51.100.7, 10.0.0.9")]);
        assert_eq!(
            resolve(ip("10.0.0.2"), &h, &trusted(), XFF),
            ip("198.51.100.7")
        );
        // two header lines are one list
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        assert_eq!(
            resolve(ip("10.0.0.2"), &h, &trusted(), XFF),
            ip("198.51.100.7")
        );
        // mapped IPv6 peers count as their IPv4 address
        let h = headers(&[("x-forwarded-for", "198.51.100.7")]);
        assert_eq!(
            resolve(ip("::ffff:10.0.0.2"), &h, &trusted(), XFF),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn all_trusted_means_the_leftmost_and_no_header_means_the_peer() {
        let h = headers(&[("x-forwarded-for", "10.1.1.1, 10.2.2.2")]);
        assert_eq!(resolve(ip("10.0.0.2"), &h, &trusted(), XFF), ip("10.1.1.1"));
        assert_eq!(
            resolve(ip("10.0.0.2"), &HeaderMap::new(), &trusted(), XFF),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn garbage_stops_the_walk_at_the_nearest_proxy() {
        let h = headers(&[("x-forwarded-for", "198.51.100.7, unknown, 10.3.3.3")]);
        assert_eq!(resolve(ip("10.0.0.2"), &h, &trusted(), XFF), ip("10.3.3.3"));
        let h = headers(&[("x-forwarded-for", "nonsense")]);
        assert_eq!(resolve(ip("10.0.0.2"), &h, &trusted(), XFF), ip("10.0.0.2"));
    }

    #[test]
    fn only_the_configured_header_counts() {
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.7"),
            ("forwarded", "for=192.0.2.60"),
        ]);
        assert_eq!(
            resolve(ip("10.0.0.2"), &h, &trusted(), XFF),
            ip("198.51.100.7")
        );
        assert_eq!(
            resolve(ip("10.0.0.2"), &h, &trusted(), FWD),
            ip("192.0.2.60")
        );
    }

    #[test]
    fn forwarded_nodes_with_ports_quotes_and_v6() {
        let h = headers(&[(
            "forwarded",
            "for=1.1.1.1, For=\"[2001:db8:cafe::17]:4711\";proto=https;by=10.0.0.2, for=10.4.4.4",
        )]);
        assert_eq!(
            resolve(ip("::1"), &h, &trusted(), FWD),
            ip("2001:db8:cafe::17")
        );
        let h = headers(&[("forwarded", "for=\"198.51.100.3:80\"")]);
        assert_eq!(resolve(ip("::1"), &h, &trusted(), FWD), ip("198.51.100.3"));
        let h = headers(&[("forwarded", "for=_hidden")]);
        assert_eq!(resolve(ip("::1"), &h, &trusted(), FWD), ip("::1"));
    }
}
