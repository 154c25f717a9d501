//! The one target grammar of every subcommand that connects (conntest, talk-client):
//! `HOST PORT`, `HOST PORT PORT...`, `HOST:PORT`, `[V6]:PORT`, service names
//! (`localhost http`), `unix:PATH` and `unix:@NAME`, turned into typed
//! [`Destination`]s, one per host and port, in the order written; plus the single port
//! and the listening address of talk-server.
//!
//! Parsing is strict where peers are lax, because a lax parse makes a script believe a
//! wrong answer: port 0, a negative port, a port over 65535 (never wrapped: 70000 is not
//! 4464), an empty host or list item, a reversed range, a stray `[` or `]` and an IP
//! literal that `-4`/`-6` excludes are all usage errors whose message names the bad
//! part.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::rc::Rc;

use super::services::ServiceDb;
use crate::reactor::UnixAddress;

pub use crate::reactor::endpoints::Family;

/// A host as the user wrote it, and whether it needs a name lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The host as typed, without the brackets of `[::1]:80`: what the output shows.
    pub text: String,
    /// An IP literal (connected to directly, no resolver involved) or a name.
    pub kind: HostKind,
}

/// How a host is turned into addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKind {
    /// An IP address literal.
    Ip(IpAddr),
    /// A name for the resolver.
    Name(String),
    /// A UNIX socket (`unix:PATH`, `unix:@NAME`); its target's port is 0.
    Unix(UnixAddress),
}

impl Target {
    /// The UNIX socket this target is, if it is one.
    pub fn unix(&self) -> Option<&UnixAddress> {
        match &self.host.kind {
            HostKind::Unix(address) => Some(address),
            _ => None,
        }
    }

    /// How output names the target: `db port 5432`, or `unix:/run/app.sock`.
    pub fn place(&self) -> String {
        match self.unix() {
            Some(_) => self.host.text.clone(),
            None => format!("{} port {}", self.host.text, self.port),
        }
    }
}

/// One host and one port: the unit that is checked and reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Shared by every target of the same host argument.
    pub host: Rc<Host>,
    /// 1-65535.
    pub port: u16,
}

/// A bad command line: the message names the bad part. Exit status 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// One place to connect to, as the command line wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A host and a port.
    Tcp(Target),
    /// `unix:PATH` or `unix:@NAME` (a Linux abstract name).
    Unix(UnixAddress),
}

/// Turns positional arguments into destinations, in the order written. The forms:
///
/// - `HOST PORTS`: one host, then its ports (`80`, `80,443`, `8000-8100`, `ssh`);
/// - `HOST PORT PORT...` (as nc takes them): one host, then several port arguments,
///   each of digits only (a port, a list or a range);
/// - `HOST:PORTS`, `[V6]:PORTS`, `unix:PATH`, `unix:@NAME`: one destination per
///   argument, as many as given.
pub fn parse_destinations(
    args: &[String],
    family: Family,
    services: &ServiceDb,
) -> Result<Vec<Destination>, UsageError> {
    if args.is_empty() {
        return Err(UsageError(
            "no target given (write HOST PORT or HOST:PORT)".into(),
        ));
    }
    if let [host_arg, first_ports, more @ ..] = args
        && !host_arg.starts_with(UNIX_PREFIX)
        && !first_ports.contains(':')
        && (more.is_empty() || is_digit_spec(first_ports))
    {
        let (host, port_part) = split_target(host_arg)?;
        if port_part.is_none() {
            let host = Rc::new(check_family(host, family)?);
            if first_ports.is_empty() {
                return Err(UsageError(format!("empty port list for host '{host_arg}'")));
            }
            if let Some(bad) = more.iter().find(|arg| !is_digit_spec(arg)) {
                let all: Vec<&str> = args[1..].iter().map(String::as_str).collect();
                return Err(UsageError(format!(
                    "'{bad}' is not a port: after '{host_arg}' every argument must be a \
                     port, list or range of digits (for several ports of one host write \
                     {host_arg} {})",
                    all.join(",")
                )));
            }
            let mut destinations = Vec::new();
            for ports in &args[1..] {
                destinations.extend(expand(host.clone(), ports, ports, services)?);
            }
            return Ok(destinations);
        }
    }
    let mut destinations = Vec::new();
    for arg in args {
        if let Some(rest) = arg.strip_prefix(UNIX_PREFIX) {
            destinations.push(Destination::Unix(unix_address(rest, arg)?));
            continue;
        }
        let (host, ports) = split_target(arg)?;
        let Some(ports) = ports else {
            return Err(UsageError(missing_port_message(arg, &host)));
        };
        let host = Rc::new(check_family(host, family)?);
        destinations.extend(expand(host, ports, arg, services)?);
    }
    Ok(destinations)
}

/// Like [`parse_destinations`], for a command that connects to exactly one place
/// (talk-client): the same forms, but one host and one port.
pub fn parse_destination(
    args: &[String],
    family: Family,
    services: &ServiceDb,
) -> Result<Destination, UsageError> {
    let mut destinations = parse_destinations(args, family, services)?;
    if destinations.len() != 1 {
        return Err(UsageError(format!(
            "'{}' names {} ports; give exactly one (HOST PORT or HOST:PORT)",
            args.join(" "),
            destinations.len()
        )));
    }
    Ok(destinations.remove(0))
}

/// The TCP targets, in order, or a usage error for a UNIX one (for a command that
/// does not connect to UNIX sockets yet).
pub fn tcp_only(destinations: Vec<Destination>) -> Result<Vec<Target>, UsageError> {
    destinations
        .into_iter()
        .map(|destination| match destination {
            Destination::Tcp(target) => Ok(target),
            Destination::Unix(address) => Err(UsageError(format!(
                "'{address}': UNIX socket targets are not supported here yet"
            ))),
        })
        .collect()
}

/// Every destination as a target; a UNIX socket becomes a target whose host is the
/// socket (as written) and whose port is 0.
pub fn with_unix(destinations: Vec<Destination>) -> Vec<Target> {
    destinations
        .into_iter()
        .map(|destination| match destination {
            Destination::Tcp(target) => target,
            Destination::Unix(address) => Target {
                host: Rc::new(Host {
                    text: address.to_string(),
                    kind: HostKind::Unix(address),
                }),
                port: 0,
            },
        })
        .collect()
}

/// The TLS server name sent to a UNIX socket when no `--sni` is given, which
/// [`check_tls_name`] allows only when the name is not verified (a pinned certificate,
/// `--insecure`): a socket has no host name, and some name must be sent.
pub const UNIX_TLS_NAME: &str = "localhost";

impl Destination {
    /// See [`Target::tls_server_name`].
    pub fn tls_server_name(&self, sni: Option<&str>) -> String {
        match self {
            Destination::Tcp(target) => target.tls_server_name(sni),
            Destination::Unix(_) => sni.unwrap_or(UNIX_TLS_NAME).to_string(),
        }
    }

    /// The UNIX socket this destination is, if it is one.
    pub fn unix(&self) -> Option<&UnixAddress> {
        match self {
            Destination::Tcp(target) => target.unix(),
            Destination::Unix(address) => Some(address),
        }
    }
}

impl Target {
    /// The name a TLS client sends as SNI and verifies the server's certificate for,
    /// one rule for every command that connects: `sni` when given, else the host as
    /// typed; for a UNIX socket, which has no host name, [`UNIX_TLS_NAME`] (refused
    /// beforehand by [`check_tls_name`] where the name would be verified).
    pub fn tls_server_name(&self, sni: Option<&str>) -> String {
        match (sni, self.unix()) {
            (Some(name), _) => name.to_string(),
            (None, Some(_)) => UNIX_TLS_NAME.to_string(),
            (None, None) => self.host.text.clone(),
        }
    }
}

/// TLS to the UNIX `socket` verifies the server's certificate for a name only
/// `--sni` can give: without it, and with the name verified (`name_verified`: neither
/// a pinned certificate nor `--insecure`), a usage error naming the socket and saying
/// to give `--sni NAME`, or `otherwise` (the command's other ways, "or ...").
pub fn check_tls_name(
    socket: Option<&UnixAddress>,
    sni: Option<&str>,
    name_verified: bool,
    otherwise: &str,
) -> Result<(), UsageError> {
    match socket {
        Some(socket) if sni.is_none() && name_verified => Err(UsageError(format!(
            "--tls to the UNIX socket '{socket}' has no host name to verify the certificate \
             for: give --sni NAME (the name in the server's certificate), {otherwise}"
        ))),
        _ => Ok(()),
    }
}

const UNIX_PREFIX: &str = "unix:";

fn unix_address(rest: &str, arg: &str) -> Result<UnixAddress, UsageError> {
    if rest.is_empty() || rest == "@" {
        return Err(UsageError(format!(
            "missing socket path in '{arg}' (write unix:PATH or unix:@NAME)"
        )));
    }
    Ok(UnixAddress::from_arg(rest))
}

/// A port spec made of digits only: `5432`, `80,443`, `8000-8100`.
fn is_digit_spec(text: &str) -> bool {
    !text.is_empty()
        && text
            .split(',')
            .all(|item| item.split('-').all(is_number) && item.split('-').count() <= 2)
}

/// A port typed on its own (talk-server's PORT, `--port`): 1-65535, or 0 as well
/// when `zero_means_any` (the kernel chooses).
pub fn parse_port(text: &str, zero_means_any: bool) -> Result<u16, String> {
    if text.starts_with('-') {
        return Err(format!("invalid port '{text}': ports are 1-65535"));
    }
    if zero_means_any && text == "0" {
        return Ok(0);
    }
    if !is_number(text) {
        return Err(format!("invalid port '{text}': ports are 1-65535"));
    }
    port_number(text).map_err(|reason| format!("invalid port '{text}': {reason}"))
}

/// An address to listen on (`--bind`): an IP literal, with or without brackets
/// (`127.0.0.1`, `::1`, `[::1]`), or a name whose every address is used
/// (`localhost`).
pub fn parse_bind(text: &str) -> Result<Host, String> {
    let inner = match text.strip_prefix('[') {
        Some(rest) => rest
            .strip_suffix(']')
            .ok_or_else(|| format!("missing ']' in '{text}'"))?,
        None => text,
    };
    if let Ok(ip) = inner.parse::<IpAddr>() {
        return Ok(ip_host(inner, ip));
    }
    if inner.len() != text.len() {
        return Err(format!(
            "'{inner}' in '{text}' is not an IPv6 address (brackets are for IPv6 literals only)"
        ));
    }
    host_from(text, text).map_err(|error| error.0)
}

fn missing_port_message(arg: &str, host: &Host) -> String {
    match host.kind {
        HostKind::Ip(IpAddr::V6(_)) => format!(
            "missing port in '{arg}' (write [{}]:PORTS; an IPv6 address needs brackets)",
            host.text
        ),
        _ => format!("missing port in '{arg}' (write {arg}:PORTS, or HOST PORTS for one host)"),
    }
}

fn expand(
    host: Rc<Host>,
    ports: &str,
    arg: &str,
    services: &ServiceDb,
) -> Result<Vec<Destination>, UsageError> {
    if ports.is_empty() {
        return Err(UsageError(format!("empty port list in '{arg}'")));
    }
    Ok(parse_ports(ports, services)?
        .into_iter()
        .map(|port| {
            Destination::Tcp(Target {
                host: host.clone(),
                port,
            })
        })
        .collect())
}

/// Splits one argument into its host and, if present, its port part.
fn split_target(arg: &str) -> Result<(Host, Option<&str>), UsageError> {
    let unbracketed = arg.strip_prefix('[').unwrap_or(arg);
    if let Some(stray) = unbracketed.chars().find(|c| *c == '[').or_else(|| {
        (!arg.starts_with('['))
            .then(|| arg.chars().find(|c| *c == ']'))
            .flatten()
    }) {
        return Err(UsageError(format!(
            "stray '{stray}' in '{arg}' (write [ADDRESS]:PORT for an IPv6 address)"
        )));
    }
    if let Some(rest) = arg.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return Err(UsageError(format!("missing ']' in '{arg}'")));
        };
        let host = bracketed_host(inner, arg)?;
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(ports) => Ok((host, Some(ports))),
                None => Err(UsageError(format!(
                    "unexpected '{after}' after ']' in '{arg}' (write [ADDRESS]:PORTS)"
                ))),
            },
        };
    }
    if let Ok(ip) = arg.parse::<Ipv6Addr>() {
        // A bare IPv6 literal is a host: "::1:80" must never be read as host ::1, port 80.
        return Ok((ip_host(arg, IpAddr::V6(ip)), None));
    }
    match arg.matches(':').count() {
        0 => Ok((host_from(arg, arg)?, None)),
        1 => {
            let (host, ports) = arg.split_once(':').unwrap_or((arg, ""));
            Ok((host_from(host, arg)?, Some(ports)))
        }
        _ => Err(UsageError(format!(
            "'{arg}' is not HOST:PORTS (an IPv6 address needs brackets, as in [::1]:80)"
        ))),
    }
}

fn bracketed_host(inner: &str, arg: &str) -> Result<Host, UsageError> {
    if let Ok(ip) = inner.parse::<Ipv6Addr>() {
        return Ok(ip_host(inner, IpAddr::V6(ip)));
    }
    // A scoped address (fe80::1%eth0) has no std parser; the resolver understands it.
    if inner.contains(':') && inner.contains('%') {
        return Ok(Host {
            text: inner.to_string(),
            kind: HostKind::Name(inner.to_string()),
        });
    }
    Err(UsageError(format!(
        "'{inner}' in '{arg}' is not an IPv6 address (brackets are for IPv6 literals only)"
    )))
}

fn ip_host(text: &str, ip: IpAddr) -> Host {
    Host {
        text: text.to_string(),
        kind: HostKind::Ip(ip),
    }
}

fn host_from(text: &str, arg: &str) -> Result<Host, UsageError> {
    if text.is_empty() {
        return Err(UsageError(format!("missing host in '{arg}'")));
    }
    if let Some(stray) = text.chars().find(|c| matches!(c, '[' | ']')) {
        return Err(UsageError(format!(
            "stray '{stray}' in '{arg}' (write [ADDRESS]:PORT for an IPv6 address)"
        )));
    }
    if let Ok(ip) = text.parse::<Ipv4Addr>() {
        return Ok(ip_host(text, IpAddr::V4(ip)));
    }
    if text.chars().any(char::is_whitespace) {
        return Err(UsageError(format!(
            "host name '{text}' contains white space"
        )));
    }
    Ok(Host {
        text: text.to_string(),
        kind: HostKind::Name(text.to_string()),
    })
}

fn check_family(host: Host, family: Family) -> Result<Host, UsageError> {
    if let HostKind::Ip(ip) = host.kind
        && !family.allows(ip)
    {
        let (is, flag, allowed) = match ip {
            IpAddr::V4(_) => ("IPv4", "-6", "IPv6"),
            IpAddr::V6(_) => ("IPv6", "-4", "IPv4"),
        };
        return Err(UsageError(format!(
            "{} is an {is} address, but {flag} allows only {allowed}",
            host.text
        )));
    }
    Ok(host)
}

/// Expands a port spec (`80`, `80,443`, `8000-8100`, `ssh`, or a mix) into ports, in
/// the order written.
pub fn parse_ports(spec: &str, services: &ServiceDb) -> Result<Vec<u16>, UsageError> {
    if spec.is_empty() {
        return Err(UsageError("empty port list".into()));
    }
    let mut ports = Vec::new();
    for item in spec.split(',') {
        if item.is_empty() {
            return Err(UsageError(format!("empty item in port list '{spec}'")));
        }
        match parse_item(item, services) {
            Ok(Item::One(port)) => ports.push(port),
            Ok(Item::Range(low, high)) => ports.extend(low..=high),
            Err(reason) if item == spec => {
                return Err(UsageError(format!("invalid port '{item}': {reason}")));
            }
            Err(reason) => {
                return Err(UsageError(format!(
                    "invalid port '{item}' in '{spec}': {reason}"
                )));
            }
        }
    }
    Ok(ports)
}

enum Item {
    One(u16),
    Range(u16, u16),
}

fn parse_item(item: &str, services: &ServiceDb) -> Result<Item, String> {
    if item.strip_prefix('-').is_some_and(is_number) {
        return Err("a negative number (ports are 1-65535)".into());
    }
    if is_number(item) {
        return port_number(item).map(Item::One);
    }
    if let Some((low, high)) = item.split_once('-')
        && is_number(low)
        && is_number(high)
    {
        let (low, high) = (port_number(low)?, port_number(high)?);
        if low > high {
            return Err(format!("reversed range (write {high}-{low})"));
        }
        return Ok(Item::Range(low, high));
    }
    let db = services.get();
    if let Some(port) = db.port(item) {
        return Ok(Item::One(port));
    }
    let what = if item.contains('-') {
        "not a port, a range LOW-HIGH, or a known service name"
    } else {
        "not a port number or a known service name"
    };
    if db.available() {
        Err(what.to_string())
    } else {
        Err(format!(
            "{what} (no services database at {} to look names up in)",
            services.path().display()
        ))
    }
}

fn is_number(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// A decimal port, 1-65535; larger values are errors, never wrapped.
fn port_number(digits: &str) -> Result<u16, String> {
    match digits.parse::<u32>() {
        Ok(0) => Err("port 0 cannot be connected to (ports are 1-65535)".into()),
        Ok(n) => u16::try_from(n).map_err(|_| format!("{n} is out of range (ports are 1-65535)")),
        Err(_) => Err(format!("{digits} is out of range (ports are 1-65535)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::services::Services;

    fn db() -> ServiceDb {
        ServiceDb::preloaded(Services::parse(
            "ssh 22/tcp\nhttp 80/tcp www\nhttps 443/tcp\nkerberos-adm 749/tcp\n",
        ))
    }

    fn parse(args: &[&str]) -> Result<Vec<(String, u16)>, String> {
        parse_with(args, Family::Any)
    }

    fn parse_with(args: &[&str], family: Family) -> Result<Vec<(String, u16)>, String> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        parse_destinations(&args, family, &db())
            .and_then(tcp_only)
            .map(|targets| {
                targets
                    .into_iter()
                    .map(|t| (t.host.text.clone(), t.port))
                    .collect()
            })
            .map_err(|e| e.0)
    }

    fn pairs(list: &[(&str, u16)]) -> Vec<(String, u16)> {
        list.iter().map(|(h, p)| (h.to_string(), *p)).collect()
    }

    #[test]
    fn classic_host_ports_form_expands_in_written_order() {
        assert_eq!(
            parse(&["db", "443,80,8000-8002,ssh"]),
            Ok(pairs(&[
                ("db", 443),
                ("db", 80),
                ("db", 8000),
                ("db", 8001),
                ("db", 8002),
                ("db", 22)
            ]))
        );
    }

    #[test]
    fn host_colon_ports_form_takes_several_targets() {
        assert_eq!(
            parse(&["db:5432", "cache:6379,www", "[::1]:1-2", "127.0.0.1:https"]),
            Ok(pairs(&[
                ("db", 5432),
                ("cache", 6379),
                ("cache", 80),
                ("::1", 1),
                ("::1", 2),
                ("127.0.0.1", 443)
            ]))
        );
        assert_eq!(parse(&["db:5432"]), Ok(pairs(&[("db", 5432)])));
    }

    #[test]
    fn ip_literals_need_no_resolver_and_names_do() {
        let db = db();
        let args = ["127.0.0.1:80".to_string(), "localhost:80".to_string()];
        let targets = tcp_only(parse_destinations(&args, Family::Any, &db).unwrap()).unwrap();
        assert_eq!(
            targets[0].host.kind,
            HostKind::Ip("127.0.0.1".parse().unwrap())
        );
        assert_eq!(targets[1].host.kind, HostKind::Name("localhost".into()));
        let parse = |args: &[&str]| {
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            tcp_only(parse_destinations(&args, Family::Any, &db).unwrap()).unwrap()
        };
        let v6 = parse(&["::1", "80"]);
        assert_eq!(v6[0].host.kind, HostKind::Ip("::1".parse().unwrap()));
        let bracketed = parse(&["[::1]", "80"]);
        assert_eq!(bracketed[0].host.text, "::1");
    }

    #[test]
    fn service_names_with_hyphens_are_names_not_ranges() {
        assert_eq!(parse(&["h", "kerberos-adm"]), Ok(pairs(&[("h", 749)])));
    }

    #[test]
    fn port_zero_is_a_usage_error_naming_it() {
        let error = parse(&["h", "0"]).unwrap_err();
        assert!(error.contains("'0'") && error.contains("port 0"), "{error}");
        let error = parse(&["h:80,0"]).unwrap_err();
        assert!(error.contains("'0' in '80,0'"), "{error}");
    }

    #[test]
    fn ports_over_65535_are_errors_and_never_wrap() {
        for spec in ["70000", "65536", "99999999999999999999", "1-70000"] {
            let error = parse(&["h", spec]).unwrap_err();
            assert!(error.contains("out of range"), "{spec}: {error}");
        }
        assert_eq!(parse(&["h", "65535"]), Ok(pairs(&[("h", 65535)])));
    }

    #[test]
    fn unknown_service_names_are_errors_naming_them() {
        let error = parse(&["h", "abc"]).unwrap_err();
        assert!(
            error.contains("'abc'") && error.contains("service name"),
            "{error}"
        );
        let error = parse(&["h", "80-"]).unwrap_err();
        assert!(
            error.contains("'80-'") && error.contains("LOW-HIGH"),
            "{error}"
        );
    }

    #[test]
    fn without_a_services_database_names_fail_and_say_why() {
        let db = ServiceDb::at("/nonexistent/twistctl/services");
        let error = parse_ports("ssh", &db).unwrap_err().0;
        assert!(error.contains("'ssh'"), "{error}");
        assert!(error.contains("/nonexistent/twistctl/services"), "{error}");
        assert_eq!(parse_ports("22,80", &db).unwrap(), vec![22, 80]);
    }

    #[test]
    fn empty_specs_and_empty_list_items_are_errors() {
        let error = parse(&["h", ""]).unwrap_err();
        assert!(error.contains("empty port list"), "{error}");
        let error = parse(&["h:"]).unwrap_err();
        assert!(error.contains("empty port list in 'h:'"), "{error}");
        let error = parse(&["h", "80,,443"]).unwrap_err();
        assert!(
            error.contains("empty item") && error.contains("'80,,443'"),
            "{error}"
        );
        let error = parse(&["h", "80,"]).unwrap_err();
        assert!(
            error.contains("empty item") && error.contains("'80,'"),
            "{error}"
        );
    }

    #[test]
    fn reversed_ranges_are_errors_that_suggest_the_right_order() {
        let error = parse(&["h", "8100-8000"]).unwrap_err();
        assert!(
            error.contains("'8100-8000'") && error.contains("8000-8100"),
            "{error}"
        );
        assert_eq!(parse(&["h", "7-7"]), Ok(pairs(&[("h", 7)])));
    }

    #[test]
    fn a_missing_port_is_an_error_naming_the_target() {
        let error = parse(&["db"]).unwrap_err();
        assert!(error.contains("missing port in 'db'"), "{error}");
        let error = parse(&["db", "web", "cache"]).unwrap_err();
        assert!(error.contains("missing port in 'db'"), "{error}");
        let error = parse(&["db:5432", "80"]).unwrap_err();
        assert!(error.contains("missing port in '80'"), "{error}");
        let error = parse(&["::1"]).unwrap_err();
        assert!(error.contains("[::1]:PORTS"), "{error}");
        // "::1:80" is a valid IPv6 address, not host ::1 with port 80.
        let error = parse(&["::1:80"]).unwrap_err();
        assert!(error.contains("missing port in '::1:80'"), "{error}");
    }

    #[test]
    fn nc_style_host_port_port_takes_digit_ports_and_suggests_commas_otherwise() {
        assert_eq!(
            parse(&["db", "5432", "6379", "8000-8001"]),
            Ok(pairs(&[
                ("db", 5432),
                ("db", 6379),
                ("db", 8000),
                ("db", 8001)
            ]))
        );
        let error = parse(&["db", "5432", "ssh"]).unwrap_err();
        assert!(
            error.contains("'ssh'") && error.contains("db 5432,ssh"),
            "{error}"
        );
        let error = parse(&["db", "5432", "cache:6379"]).unwrap_err();
        assert!(error.contains("'cache:6379'"), "{error}");
    }

    #[test]
    fn stray_brackets_and_negative_ports_are_usage_errors() {
        for bad in ["db]:80", "::1]:80", "d[b:80", "[::1]]:80"] {
            let error = parse(&[bad]).unwrap_err();
            assert!(error.contains(&format!("'{bad}'")), "{error}");
        }
        let error = parse(&["db", "-8"]).unwrap_err();
        assert!(error.contains("ports are 1-65535"), "{error}");
    }

    #[test]
    fn unix_targets_parse_to_paths_and_abstract_names() {
        let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let parsed = parse_destinations(
            &args(&["unix:/run/app.sock", "unix:@name"]),
            Family::Any,
            &db(),
        )
        .unwrap();
        assert_eq!(
            parsed,
            [
                Destination::Unix(UnixAddress::from_arg("/run/app.sock")),
                Destination::Unix(UnixAddress::from_arg("@name")),
            ]
        );
        assert!(parse_destinations(&args(&["unix:"]), Family::Any, &db()).is_err());
    }

    #[test]
    fn one_destination_is_one_port_and_listening_ports_may_be_zero() {
        let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(parse_destination(&args(&["localhost", "http"]), Family::Any, &db()).is_ok());
        let error =
            parse_destination(&args(&["localhost", "80,81"]), Family::Any, &db()).unwrap_err();
        assert!(error.0.contains("exactly one"), "{error}");
        assert_eq!(parse_port("0", true), Ok(0));
        assert!(parse_port("0", false).is_err());
        assert!(
            parse_port("-8", true)
                .unwrap_err()
                .contains("ports are 1-65535")
        );
        assert_eq!(parse_bind("[::1]").unwrap().text, "::1");
        assert_eq!(
            parse_bind("localhost").unwrap().kind,
            HostKind::Name("localhost".into())
        );
        assert!(parse_bind("[db]").is_err());
    }

    #[test]
    fn malformed_hosts_are_errors_naming_them() {
        let error = parse(&[":80"]).unwrap_err();
        assert!(error.contains("missing host in ':80'"), "{error}");
        let error = parse(&["[::1:80"]).unwrap_err();
        assert!(error.contains("missing ']'"), "{error}");
        let error = parse(&["[db]:80"]).unwrap_err();
        assert!(error.contains("'db'") && error.contains("IPv6"), "{error}");
        let error = parse(&["[::1]80"]).unwrap_err();
        assert!(error.contains("'80' after ']'"), "{error}");
        let error = parse(&["a:b:c"]).unwrap_err();
        assert!(
            error.contains("'a:b:c'") && error.contains("brackets"),
            "{error}"
        );
    }

    #[test]
    fn ip_literals_of_an_excluded_family_are_usage_errors() {
        let error = parse_with(&["127.0.0.1", "80"], Family::V6).unwrap_err();
        assert!(
            error.contains("127.0.0.1") && error.contains("-6"),
            "{error}"
        );
        let error = parse_with(&["[::1]:80"], Family::V4).unwrap_err();
        assert!(error.contains("::1") && error.contains("-4"), "{error}");
        assert!(parse_with(&["[::1]:80"], Family::V6).is_ok());
        assert!(parse_with(&["localhost:80"], Family::V4).is_ok());
    }

    #[test]
    fn tls_to_a_unix_socket_needs_sni_unless_the_name_is_not_verified() {
        let socket = UnixAddress::from_arg("/run/app.sock");
        let error = check_tls_name(Some(&socket), None, true, "or --insecure").unwrap_err();
        assert_eq!(
            error.0,
            "--tls to the UNIX socket 'unix:/run/app.sock' has no host name to verify the \
             certificate for: give --sni NAME (the name in the server's certificate), or \
             --insecure"
        );
        assert!(check_tls_name(Some(&socket), Some("app.test"), true, "").is_ok());
        assert!(check_tls_name(Some(&socket), None, false, "").is_ok());
        assert!(check_tls_name(None, None, true, "").is_ok());
        let unix = Destination::Unix(socket);
        assert_eq!(unix.tls_server_name(Some("app.test")), "app.test");
        assert_eq!(unix.tls_server_name(None), UNIX_TLS_NAME);
        let targets = with_unix(vec![unix]);
        assert_eq!(targets[0].tls_server_name(None), UNIX_TLS_NAME);
        let tcp = parse_destination(&["example.test:443".to_string()], Family::Any, &db()).unwrap();
        assert_eq!(tcp.unix(), None);
        assert_eq!(tcp.tls_server_name(None), "example.test");
        assert_eq!(tcp.tls_server_name(Some("other.test")), "other.test");
    }
}
