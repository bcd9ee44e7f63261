//! Address blocks in CIDR notation (`10.0.0.0/8`, `fd00::/8`, or one address), as
//! `server.trusted_proxies` names them.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A block of addresses: a network address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not an IP address or a block like 10.0.0.0/8")]
    Syntax(String),
    #[error("{text:?}: the prefix length must be at most {max}")]
    Prefix { text: String, max: u8 },
    #[error("{text:?} has bits set past its /{prefix}; the block is {network}/{prefix}")]
    HostBits {
        text: String,
        network: IpAddr,
        prefix: u8,
    },
}

fn bits(ip: IpAddr) -> (u128, u8) {
    match ip.to_canonical() {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

fn mask(prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let all = if width == 32 {
        u128::from(u32::MAX)
    } else {
        u128::MAX
    };
    // prefix >= 1, so the shift is at most 127
    let host = (1u128 << (width - prefix)) - 1;
    all & !host
}

impl Cidr {
    /// Whether `ip` lies in the block (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (net, width) = bits(self.network);
        let (addr, addr_width) = bits(ip);
        width == addr_width && addr & mask(self.prefix, width) == net
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Cidr, CidrError> {
        let syntax = || CidrError::Syntax(text.to_string());
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text.trim(), None),
        };
        let network: IpAddr = addr.parse().map_err(|_| syntax())?;
        let network = network.to_canonical();
        let (value, width) = bits(network);
        let prefix = match prefix {
            None => width,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                let n: u32 = p.parse().map_err(|_| syntax())?;
                if n > u32::from(width) {
                    return Err(CidrError::Prefix {
                        text: text.to_string(),
                        max: width,
                    });
                }
                n as u8
            }
            Some(_) => return Err(syntax()),
        };
        let masked = value & mask(prefix, width);
        if masked != value {
            let network = match network {
                IpAddr::V4(_) => IpAddr::V4((masked as u32).into()),
                IpAddr::V6(_) => IpAddr::V6(masked.into()),
            };
            return Err(CidrError::HostBits {
                text: text.to_string(),
                network,
                prefix,
            });
        }
        Ok(Cidr { network, prefix })
    }
}

impl TryFrom<String> for Cidr {
    type Error = CidrError;
    fn try_from(s: String) -> Result<Cidr, CidrError> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Whether any block of `list` holds `ip`.
pub fn any_contains(list: &[Cidr], ip: IpAddr) -> bool {
    list.iter().any(|c| c.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_hold_their_addresses_only() {
        let b: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(b.contains(ip("10.0.0.1")));
        assert!(b.contains(ip("10.255.255.255")));
        assert!(!b.contains(ip("11.0.0.0")));
        assert!(!b.contains(ip("9.255.255.255")));
        assert!(
            b.contains(ip("::ffff:10.1.2.3")),
            "IPv4-mapped counts as IPv4"
        );
        assert!(!b.contains(ip("::1")));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert_eq!(one.to_string(), "192.0.2.7/32");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")) && !all.contains(ip("2001:db8::1")));
        let all6: Cidr = "::/0".parse().unwrap();
        assert!(all6.contains(ip("2001:db8::1")));
        let odd: Cidr = "172.16.0.0/12".parse().unwrap();
        assert!(odd.contains(ip("172.31.255.1")) && !odd.contains(ip("172.32.0.1")));
    }

    #[test]
    fn bad_blocks_are_named() {
        assert!(matches!(
            "10.0.0/8".parse::<Cidr>(),
            Err(CidrError::Syntax(_))
        ));
        assert!(matches!(
            "10.0.0.0/".parse::<Cidr>(),
            Err(CidrError::Syntax(_))
        ));
        assert!(matches!(
            "10.0.0.0/+8".parse::<Cidr>(),
            Err(CidrError::Syntax(_))
        ));
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::Prefix { max: 32, .. })
        ));
        assert!(matches!(
            "::/129".parse::<Cidr>(),
            Err(CidrError::Prefix { max: 128, .. })
        ));
        let e = "10.1.2.3/8".parse::<Cidr>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"10.1.2.3/8\" has bits set past its /8; the block is 10.0.0.0/8"
        );
    }

    #[test]
    fn serde_round_trip_as_text() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct T {
            b: Vec<Cidr>,
        }
        let t: T = toml::from_str("b = [\"10.0.0.0/8\", \"::1\"]").unwrap();
        assert_eq!(
            toml::to_string(&t).unwrap().trim(),
            "b = [\"10.0.0.0/8\", \"::1/128\"]"
        );
        assert!(toml::from_str::<T>("b = [\"nope\"]").is_err());
    }
}
