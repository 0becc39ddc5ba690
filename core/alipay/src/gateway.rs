//! Where the engine's Alipay client may connect, and how much of an answer it reads.
//!
//! Alipay's own gateways are always allowed; a merchant's `custom` gateway only when the platform
//! turned `alipay.allow_custom_gateway` on. Whatever the gateway, the client never connects to an
//! address that is not globally routable (loopback, private, link-local, carrier-grade NAT,
//! multicast, reserved …) unless `alipay.custom_gateway_networks` names it: otherwise a merchant
//! could make the engine post signed requests into the platform's own network.
//!
//! Invariant: every connection the client opens goes to an address [`GatewayPolicy::permits_ip`]
//! accepted. An IP-literal host is checked before the request is sent ([`GatewayPolicy::check_url`]);
//! a name is checked inside the client's resolver on every connection, so a name that answers
//! differently the second time (DNS rebinding) is checked again. The client uses no proxy and
//! follows no redirect, either of which would connect on its behalf out of this module's sight.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Error;

/// Alipay's production gateway.
pub const PRODUCTION_GATEWAY: &str = "https://openapi.alipay.com/gateway.do";
/// Alipay's own sandbox.
pub const SANDBOX_GATEWAY: &str = "https://openapi-sandbox.dl.alipaydev.com/gateway.do";
/// The host of [`PRODUCTION_GATEWAY`]: a `custom` URL on it is held to the production rules.
pub const PRODUCTION_HOST: &str = "openapi.alipay.com";

/// `alipay.max_response_bytes` when nothing sets it: Alipay's answers are a few KiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// A range of addresses named in `alipay.custom_gateway_networks`: `10.20.0.0/16`, `::1/128`,
/// or one address (`127.0.0.1`, the same as `/32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Network {
    base: IpAddr,
    prefix: u8,
}

impl Network {
    /// Whether `ip` is inside the range (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.base, ip.to_canonical()) {
            (IpAddr::V4(base), IpAddr::V4(ip)) => {
                let mask = mask_v4(self.prefix);
                u32::from(ip) & mask == u32::from(base)
            }
            (IpAddr::V6(base), IpAddr::V6(ip)) => {
                let mask = mask_v6(self.prefix);
                u128::from(ip) & mask == u128::from(base)
            }
            _ => false,
        }
    }
}

fn mask_v4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Network {
    type Err = &'static str;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const WHAT: &str = "expected an IP address or a CIDR range such as 10.0.0.0/8 or ::1/128";
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let base: IpAddr = address.parse().map_err(|_| WHAT)?;
        let bits = if base.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= bits).ok_or(WHAT)?,
            None => bits,
        };
        // An IPv4-mapped range is written as IPv6 but matched as IPv4, like the addresses in it.
        let (base, prefix) = match base {
            IpAddr::V6(v6) if prefix >= 96 && v6.to_ipv4_mapped().is_some() => {
                (v6.to_canonical(), prefix - 96)
            }
            other => (other, prefix),
        };
        // A typo such as 10.0.0.1/8 more likely means a mistake than 10.0.0.0/8.
        let exact = match base {
            IpAddr::V4(v4) => u32::from(v4) & !mask_v4(prefix) == 0,
            IpAddr::V6(v6) => u128::from(v6) & !mask_v6(prefix) == 0,
        };
        if !exact {
            return Err(
                "the address has bits set past the prefix length (write the range's first address)",
            );
        }
        Ok(Self { base, prefix })
    }
}

impl TryFrom<String> for Network {
    type Error = &'static str;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Network> for String {
    fn from(network: Network) -> Self {
        network.to_string()
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// Whether `ip` is a globally routable unicast address. Everything else — loopback, private,
/// link-local, carrier-grade NAT, documentation, benchmarking, multicast, reserved, unspecified
/// (which reaches the local host) — is not, and neither is an IPv6 address that carries such an
/// IPv4 address (mapped, compatible, NAT64, 6to4).
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_global_v4(v4),
        IpAddr::V6(v6) => is_global_v6(v6),
    }
}

fn is_global_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let special = a == 0
        || a == 10
        || a == 127
        || (a == 100 && (b & 0xc0) == 64)
        || (a == 169 && b == 254)
        || (a == 172 && (b & 0xf0) == 16)
        || (a == 192 && b == 0 && (c == 0 || c == 2))
        || (a == 192 && b == 88 && c == 99)
        || (a == 192 && b == 168)
        || (a == 198 && (b & 0xfe) == 18)
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
        || a >= 224;
    !special
}

fn is_global_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return is_global_v4(v4);
    }
    let s = ip.segments();
    // Only 2000::/3 is global unicast; inside it, 2001::/23 holds protocol assignments (Teredo,
    // benchmarking, ORCHID) and 2001:db8::/32 and 3fff::/20 are documentation.
    (s[0] & 0xe000) == 0x2000
        && !(s[0] == 0x2001 && s[1] < 0x0200)
        && !(s[0] == 0x2001 && s[1] == 0x0db8)
        && !(s[0] == 0x3fff && s[1] < 0x1000)
}

/// The IPv4 address an IPv6 address stands for, when it is one of the forms that reach it.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let [.., a, b, c, d] = ip.octets();
    let low = Ipv4Addr::new(a, b, c, d);
    if s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0) {
        // IPv4-mapped, and the deprecated IPv4-compatible form (which covers `::` and `::1`).
        return Some(low);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(low);
    }
    if s[0] == 0x2002 {
        let [_, _, a, b, c, d, ..] = ip.octets();
        return Some(Ipv4Addr::new(a, b, c, d));
    }
    None
}

/// The platform's rules for gateways, from the `[alipay]` configuration.
#[derive(Debug, Clone)]
pub struct GatewayPolicy {
    allow_custom: bool,
    networks: Vec<Network>,
    max_response_bytes: usize,
}

impl Default for GatewayPolicy {
    /// Alipay's gateways only, at public addresses; answers up to 1 MiB.
    fn default() -> Self {
        Self {
            allow_custom: false,
            networks: Vec::new(),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }
}

impl GatewayPolicy {
    /// The policy the `[alipay]` settings describe: whether custom gateways are allowed, the
    /// networks they may resolve to, and the largest answer read.
    pub fn new(allow_custom: bool, networks: Vec<Network>, max_response_bytes: usize) -> Self {
        Self {
            allow_custom,
            networks,
            max_response_bytes,
        }
    }

    /// For tools and tests that run the offline sandbox on this machine (`trellis plugin test`,
    /// the demo seed): custom gateways on loopback addresses.
    pub fn local_sandbox() -> Self {
        let loopback = [
            Network {
                base: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)),
                prefix: 8,
            },
            Network {
                base: IpAddr::V6(Ipv6Addr::LOCALHOST),
                prefix: 128,
            },
        ];
        Self {
            allow_custom: true,
            networks: loopback.to_vec(),
            ..Self::default()
        }
    }

    pub fn allows_custom(&self) -> bool {
        self.allow_custom
    }

    pub fn max_response_bytes(&self) -> usize {
        self.max_response_bytes
    }

    /// Whether the client may connect to `ip`: a global address, or one in a named network.
    pub fn permits_ip(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        is_global(ip) || self.networks.iter().any(|n| n.contains(ip))
    }

    /// Checks a gateway URL before anything is sent to it: http(s), a custom gateway only when
    /// allowed, and an IP-literal host only at a permitted address (a name is checked when it
    /// is resolved, by [`resolver`]).
    pub fn check_url(&self, raw: &str) -> Result<url::Url, Error> {
        let url = url::Url::parse(raw)
            .map_err(|_| Error::GatewayRefused("the gateway URL is not an absolute URL"))?;
        if url.scheme() != "https" && url.scheme() != "http" {
            return Err(Error::GatewayRefused(
                "the gateway URL must be http or https",
            ));
        }
        if !self.allow_custom && !is_alipay(&url) {
            return Err(Error::GatewayRefused(
                "custom gateways are not enabled on this platform",
            ));
        }
        let ip = match url.host() {
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
            Some(url::Host::Domain(_)) => return Ok(url),
            None => return Err(Error::GatewayRefused("the gateway URL has no host")),
        };
        if self.permits_ip(ip) {
            Ok(url)
        } else {
            Err(Error::GatewayRefused(NOT_PUBLIC))
        }
    }

    /// Every address a gateway name resolved to must be permitted: one that is not means the
    /// name is misconfigured or hostile, whatever the other addresses are.
    fn check_resolved(&self, addresses: &[SocketAddr]) -> Result<(), Error> {
        if addresses.is_empty() {
            return Err(Error::GatewayRefused("the gateway's name has no address"));
        }
        if addresses.iter().all(|a| self.permits_ip(a.ip())) {
            Ok(())
        } else {
            Err(Error::GatewayRefused(NOT_PUBLIC))
        }
    }
}

const NOT_PUBLIC: &str =
    "the gateway is at an address that is not public and that the platform does not allow";

/// Whether `url` is one of Alipay's own gateways (scheme, host and port).
fn is_alipay(url: &url::Url) -> bool {
    [PRODUCTION_GATEWAY, SANDBOX_GATEWAY]
        .iter()
        .filter_map(|g| url::Url::parse(g).ok())
        .any(|g| g.origin() == url.origin())
}

/// The client's DNS resolver: the system's answer, refused unless every address is permitted.
pub(super) fn resolver(policy: Arc<GatewayPolicy>) -> GuardedResolver {
    GuardedResolver { policy }
}

pub(super) struct GuardedResolver {
    policy: Arc<GatewayPolicy>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Err(refused) = policy.check_resolved(&addresses) {
                let resolved: Vec<String> = addresses.iter().map(|a| a.ip().to_string()).collect();
                tracing::warn!(
                    host,
                    addresses = resolved.join(","),
                    "refused to connect to an Alipay gateway: {refused}"
                );
                return Err(refused.into());
            }
            let addresses: reqwest::dns::Addrs = Box::new(addresses.into_iter());
            Ok(addresses)
        })
    }
}

/// Appends `chunk` to `body` unless that would take it past `limit` bytes.
fn push_capped(body: &mut Vec<u8>, chunk: &[u8], limit: usize) -> Result<(), Error> {
    if chunk.len() > limit.saturating_sub(body.len()) {
        return Err(Error::ResponseTooLarge { limit });
    }
    body.extend_from_slice(chunk);
    Ok(())
}

/// Reads an answer's body, failing as soon as it passes `limit` bytes. `Content-Length` only
/// lets an answer fail early: a server may send more than it announced, or announce nothing.
pub(super) async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<String, Error> {
    if response
        .content_length()
        .is_some_and(|length| length > u64::try_from(limit).unwrap_or(u64::MAX))
    {
        return Err(Error::ResponseTooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        push_capped(&mut body, &chunk, limit)?;
    }
    // Alipay answers in UTF-8 (the request asks for it); anything else fails verification.
    Ok(match String::from_utf8(body) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// A transport failure as the client reports it: the resolver's refusal as itself, anything
/// else with its whole chain of causes (for the log; callers see a fixed text).
pub(super) fn transport(error: reqwest::Error) -> Error {
    let error = error.without_url();
    let mut causes = vec![error.to_string()];
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        if let Some(Error::GatewayRefused(reason)) = cause.downcast_ref::<Error>() {
            return Error::GatewayRefused(reason);
        }
        causes.push(cause.to_string());
        source = cause.source();
    }
    if error.is_timeout() {
        return Error::Transport("the gateway did not answer in time".into());
    }
    Error::Transport(causes.join(": "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn loopback_private_link_local_and_other_special_addresses_are_not_global() {
        for text in [
            "0.0.0.0",
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "100::1",
            "2001::1",
            "2001:db8::1",
            "64:ff9b:1::1",
        ] {
            assert!(!is_global(ip(text)), "{text} is not global");
            assert!(
                !GatewayPolicy::default().permits_ip(ip(text)),
                "{text} is refused by default"
            );
        }
    }

    #[test]
    fn public_addresses_are_global() {
        for text in [
            "1.1.1.1",
            "110.75.139.5",
            "172.15.255.255",
            "172.32.0.1",
            "100.128.0.1",
            "192.0.3.1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2400:3200::1",
            "2001:4860::8888",
        ] {
            assert!(is_global(ip(text)), "{text} is global");
        }
    }

    #[test]
    fn a_named_network_admits_its_addresses_and_no_others() {
        let policy = GatewayPolicy {
            allow_custom: true,
            networks: vec!["127.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()],
            ..GatewayPolicy::default()
        };
        for yes in ["127.0.0.1", "::ffff:127.0.0.2", "fd00::5", "8.8.8.8"] {
            assert!(policy.permits_ip(ip(yes)), "{yes}");
        }
        for no in ["10.0.0.1", "::1", "169.254.169.254", "fe80::1"] {
            assert!(!policy.permits_ip(ip(no)), "{no}");
        }
    }

    #[test]
    fn networks_parse_as_cidrs_or_single_addresses_and_print_as_cidrs() {
        assert_eq!(
            "10.0.0.0/8".parse::<Network>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "127.0.0.1".parse::<Network>().unwrap().to_string(),
            "127.0.0.1/32"
        );
        assert_eq!("::1".parse::<Network>().unwrap().to_string(), "::1/128");
        assert_eq!(
            "::ffff:192.168.0.0/112"
                .parse::<Network>()
                .unwrap()
                .to_string(),
            "192.168.0.0/16"
        );
        assert_eq!(
            "0.0.0.0/0".parse::<Network>().unwrap().to_string(),
            "0.0.0.0/0"
        );
        for bad in [
            "",
            "localhost",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.1/8",
            "10.0.0.0/-1",
            "10.0.0/8",
        ] {
            assert!(bad.parse::<Network>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_custom_gateway_is_refused_unless_the_platform_allows_it() {
        let default = GatewayPolicy::default();
        assert!(default.check_url(PRODUCTION_GATEWAY).is_ok());
        assert!(default.check_url(SANDBOX_GATEWAY).is_ok());
        for custom in [
            "https://gateway.example.com/gateway.do",
            "http://openapi.alipay.com/gateway.do",
            "https://openapi.alipay.com:8443/gateway.do",
        ] {
            assert!(
                matches!(default.check_url(custom), Err(Error::GatewayRefused(_))),
                "{custom}"
            );
        }
        let allowed = GatewayPolicy {
            allow_custom: true,
            ..GatewayPolicy::default()
        };
        assert!(
            allowed
                .check_url("https://gateway.example.com/gateway.do")
                .is_ok()
        );
        assert!(allowed.check_url("ftp://gateway.example.com/").is_err());
    }

    #[test]
    fn an_ip_literal_gateway_must_be_at_a_permitted_address_in_any_spelling() {
        let allowed = GatewayPolicy {
            allow_custom: true,
            ..GatewayPolicy::default()
        };
        for url in [
            "http://127.0.0.1:8080/sandbox/gateway.do",
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f.0.0.1/",
            "http://0.0.0.0:80/",
            "http://[::1]/",
            "http://[::ffff:7f00:1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.1/",
        ] {
            assert!(
                matches!(
                    allowed.check_url(url),
                    Err(Error::GatewayRefused(NOT_PUBLIC))
                ),
                "{url}"
            );
        }
        assert!(allowed.check_url("http://8.8.8.8/gateway.do").is_ok());
        let sandbox = GatewayPolicy::local_sandbox();
        assert!(
            sandbox
                .check_url("http://127.0.0.1:8080/sandbox/gateway.do")
                .is_ok()
        );
        assert!(sandbox.check_url("http://[::1]:8080/").is_ok());
        assert!(sandbox.check_url("http://10.0.0.1/").is_err());
    }

    #[test]
    fn a_name_is_refused_when_any_of_its_addresses_is_not_permitted() {
        let policy = GatewayPolicy::default();
        let at = |text: &str| SocketAddr::new(ip(text), 443);
        assert!(policy.check_resolved(&[at("110.75.139.5")]).is_ok());
        assert!(
            policy
                .check_resolved(&[at("110.75.139.5"), at("127.0.0.1")])
                .is_err()
        );
        assert!(policy.check_resolved(&[]).is_err());
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_name_for_a_loopback_address() {
        use reqwest::dns::Resolve as _;
        let guarded = resolver(Arc::new(GatewayPolicy {
            allow_custom: true,
            ..GatewayPolicy::default()
        }));
        let refused = guarded.resolve("localhost".parse().unwrap()).await;
        let error = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("not public"), "{error}");
        let local = resolver(Arc::new(GatewayPolicy::local_sandbox()));
        let resolved = local.resolve("localhost".parse().unwrap()).await;
        assert!(resolved.is_ok_and(|mut a| a.next().is_some()));
    }

    #[test]
    fn a_body_is_accumulated_up_to_the_limit_and_not_one_byte_more() {
        let mut body = Vec::new();
        push_capped(&mut body, &[1; 600], 1_000).unwrap();
        push_capped(&mut body, &[2; 400], 1_000).unwrap();
        assert_eq!(body.len(), 1_000);
        assert!(matches!(
            push_capped(&mut body, &[3], 1_000),
            Err(Error::ResponseTooLarge { limit: 1_000 })
        ));
        assert_eq!(body.len(), 1_000, "the refused chunk is not kept");
        let mut big = Vec::new();
        assert!(push_capped(&mut big, &[0; 1_001], 1_000).is_err());
        assert!(big.is_empty());
    }

    /// A one-shot HTTP server on loopback that answers with `head` and then `body_len` bytes.
    async fn serve_once(head: String, body_len: usize) -> SocketAddr {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = vec![0; 16 * 1024];
            let _ = stream.read(&mut request).await;
            let _ = stream.write_all(head.as_bytes()).await;
            let chunk = vec![b'a'; 64 * 1024];
            let mut sent = 0;
            while sent < body_len {
                let n = chunk.len().min(body_len - sent);
                if stream.write_all(&chunk[..n]).await.is_err() {
                    return;
                }
                sent += n;
            }
        });
        address
    }

    async fn fetch(address: SocketAddr, limit: usize) -> Result<String, Error> {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let response = client
            .get(format!("http://{address}/"))
            .send()
            .await
            .map_err(transport)?;
        read_capped(response, limit).await
    }

    #[tokio::test]
    async fn an_answer_without_a_length_is_cut_off_at_the_cap() {
        let head = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_owned();
        let address = serve_once(head, 5 * 1024 * 1024).await;
        assert!(matches!(
            fetch(address, 1024 * 1024).await,
            Err(Error::ResponseTooLarge { limit: 1_048_576 })
        ));
    }

    #[tokio::test]
    async fn an_answer_that_announces_too_much_is_refused_before_reading() {
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 5242880\r\n\r\n".to_owned();
        let address = serve_once(head, 0).await;
        assert!(matches!(
            fetch(address, 1024 * 1024).await,
            Err(Error::ResponseTooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn a_call_ends_at_the_callers_deadline_when_the_gateway_never_answers() {
        use crate::client::{AlipayClient, CallOptions};
        use crate::{PrivateKey, SignType};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        // Accepts, reads, and never answers.
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let key = PrivateKey::generate().unwrap();
        let app = crate::client::MerchantApp {
            merchant_id: "m".into(),
            app_id: "2021004100000001".into(),
            sign_type: SignType::Rsa2,
            alipay_public_key: key.public_key().clone(),
            private_key: key,
            aes: None,
            gateway_url: format!("http://{address}/gateway.do"),
            cert_sns: None,
            alipay_cert_sn: None,
            alipay_root_cert: None,
        };
        let client = AlipayClient::with_policy(
            GatewayPolicy::local_sandbox(),
            std::time::Duration::from_secs(5),
            std::time::Duration::from_secs(60),
        )
        .unwrap();
        let started = std::time::Instant::now();
        let options = CallOptions {
            deadline: Some(started + std::time::Duration::from_millis(300)),
            ..CallOptions::default()
        };
        let result = client
            .call(&app, "alipay.trade.query", None, &options)
            .await;
        assert!(matches!(result, Err(Error::DeadlineExceeded)), "{result:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(3));
        let uploaded = client
            .upload_image_until(
                &app,
                "png",
                "logo",
                vec![1],
                Some(std::time::Instant::now() + std::time::Duration::from_millis(300)),
            )
            .await;
        assert!(
            matches!(uploaded, Err(Error::DeadlineExceeded)),
            "{uploaded:?}"
        );
    }

    #[tokio::test]
    async fn an_answer_within_the_cap_is_read_whole() {
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\n".to_owned();
        let address = serve_once(head, 70_000).await;
        assert_eq!(fetch(address, 70_000).await.unwrap().len(), 70_000);
    }
}
