//! Endpoint descriptions (E-09): the strings of Twisted's `serverFromString` and
//! `clientFromString`, parsed into typed values.
//!
//! Servers: `tcp:PORT[:interface=ADDR][:backlog=N]`, `unix:PATH[:mode=OCTAL]` (a path
//! starting with `@` is a Linux abstract name, U-04), `ssl:PORT[:privateKey=FILE:certKey=FILE]`
//! (with `interface` and `backlog` as for `tcp`). A UNIX socket serves TLS with `tls=1`
//! or with `privateKey=` and `certKey=`. A TLS description without its own files uses
//! the default certificate the listener is given ([`ServerDescription::listen_with`]):
//! a program's configured or generated one. Clients: `tcp:HOST:PORT[:timeout=S]`,
//! `unix:PATH[:timeout=S]`, `tls:HOST:PORT[:trustRoots=DIR|FILE][:timeout=S]`.
//! Listening on `unix:PATH` takes over a socket file nobody accepts on any more (as
//! Twisted's UNIX endpoint does with its default lock file), never a live one.
//!
//! The first field is the kind; positional fields may also be given by name
//! (`tcp:port=80`); `key=value` fields come in any order; `\:` escapes a colon and `\\`
//! a backslash; `[::1]` keeps an IPv6 address's colons together. Every error names
//! the bad field, kind or key.
//!
//! Every kind listens ([`ServerDescription::listen`]) and connects
//! ([`ClientDescription::connect`]): TCP through the [`HostnameEndpoint`], UNIX sockets
//! through the UNIX endpoint, and TLS through the TLS layer on either.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use super::{Connection, EndpointOptions, HostnameEndpoint};
use crate::reactor::tcp::{ListenOptions, ListeningPort};
use crate::reactor::tls;
use crate::reactor::unix::{self, UnixEndpoint, UnixListenOptions, UnixPort};
use crate::reactor::{Deferred, Factory, Failure, Reactor, Step, UnixAddress};

/// Where and how to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerDescription {
    /// `tcp:PORT[:interface=ADDR][:backlog=N]`.
    Tcp {
        /// The port (0: any free port).
        port: u16,
        /// The address to bind (default 0.0.0.0).
        interface: IpAddr,
        /// The accept queue length, if given.
        backlog: Option<u32>,
    },
    /// `unix:PATH[:mode=OCTAL][:tls=1][:privateKey=FILE:certKey=FILE]`.
    Unix {
        /// The socket's address.
        path: UnixAddress,
        /// The permission bits, if given (Twisted's default 0o666).
        mode: Option<u32>,
        /// TLS over the socket (`tls=1`, or the key and certificate given), if asked.
        tls: Option<Certificate>,
    },
    /// `ssl:PORT[:privateKey=FILE:certKey=FILE][:interface=ADDR][:backlog=N]`.
    Ssl {
        /// The port (0: any free port).
        port: u16,
        /// The address to bind (default 0.0.0.0).
        interface: IpAddr,
        /// The accept queue length, if given.
        backlog: Option<u32>,
        /// The certificate to present.
        certificate: Certificate,
    },
}

/// The certificate a TLS description presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Certificate {
    /// `privateKey=FILE:certKey=FILE`.
    Files {
        /// The PEM private key.
        private_key: PathBuf,
        /// The PEM certificate chain (leaf first).
        cert_key: PathBuf,
    },
    /// Neither given: the listener's default certificate.
    Default,
}

/// A field's value as a description writes it: `\:` for a colon, `\\` for a backslash.
fn escaped(value: &str) -> String {
    value.replace('\\', "\\\\").replace(':', "\\:")
}

impl fmt::Display for Certificate {
    /// `:privateKey=FILE:certKey=FILE`, or nothing for the default.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Certificate::Files {
                private_key,
                cert_key,
            } => write!(
                f,
                ":privateKey={}:certKey={}",
                escaped(&private_key.to_string_lossy()),
                escaped(&cert_key.to_string_lossy())
            ),
            Certificate::Default => Ok(()),
        }
    }
}

impl fmt::Display for ServerDescription {
    /// The description as it would be written (parsing it gives the same value).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let network = |f: &mut fmt::Formatter<'_>, interface: &IpAddr, backlog: &Option<u32>| {
            if !interface.is_unspecified() || interface.is_ipv6() {
                match interface {
                    IpAddr::V4(ip) => write!(f, ":interface={ip}")?,
                    IpAddr::V6(ip) => write!(f, ":interface=[{ip}]")?,
                }
            }
            if let Some(backlog) = backlog {
                write!(f, ":backlog={backlog}")?;
            }
            Ok(())
        };
        match self {
            ServerDescription::Tcp {
                port,
                interface,
                backlog,
            } => {
                write!(f, "tcp:{port}")?;
                network(f, interface, backlog)
            }
            ServerDescription::Unix { path, mode, tls } => {
                match path {
                    UnixAddress::Path(path) => {
                        write!(f, "unix:{}", escaped(&path.to_string_lossy()))?
                    }
                    UnixAddress::Abstract(name) => {
                        write!(f, "unix:@{}", escaped(&String::from_utf8_lossy(name)))?
                    }
                    UnixAddress::Unnamed => f.write_str("unix:")?,
                }
                if let Some(mode) = mode {
                    write!(f, ":mode={mode:04o}")?;
                }
                match tls {
                    Some(Certificate::Default) => f.write_str(":tls=1"),
                    Some(files) => write!(f, "{files}"),
                    None => Ok(()),
                }
            }
            ServerDescription::Ssl {
                port,
                interface,
                backlog,
                certificate,
            } => {
                write!(f, "ssl:{port}{certificate}")?;
                network(f, interface, backlog)
            }
        }
    }
}

impl ServerDescription {
    /// The certificate, for a description that serves TLS.
    pub fn certificate(&self) -> Option<&Certificate> {
        match self {
            ServerDescription::Tcp { .. } => None,
            ServerDescription::Unix { tls, .. } => tls.as_ref(),
            ServerDescription::Ssl { certificate, .. } => Some(certificate),
        }
    }
}

/// What to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientDescription {
    /// `tcp:HOST:PORT[:timeout=S]`.
    Tcp {
        /// A name or an IP literal (brackets removed).
        host: String,
        /// The port.
        port: u16,
        /// The connect timeout of each attempt, if given.
        timeout: Option<Duration>,
    },
    /// `unix:PATH[:timeout=S]`.
    Unix {
        /// The socket's address.
        path: UnixAddress,
        /// The connect timeout, if given.
        timeout: Option<Duration>,
    },
    /// `tls:HOST:PORT[:trustRoots=DIR|FILE][:timeout=S]`.
    Tls {
        /// A name or an IP literal (brackets removed); also the name verified.
        host: String,
        /// The port.
        port: u16,
        /// CA certificates to trust instead of the system's, if given.
        trust_roots: Option<PathBuf>,
        /// The connect timeout of each attempt, if given.
        timeout: Option<Duration>,
    },
}

/// What is wrong with a description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DescriptionProblem {
    /// Nothing was given.
    Empty,
    /// The kind (first field) is not one this side knows.
    UnknownKind(String),
    /// A `key=` this kind does not take.
    UnknownKey(String),
    /// A key given twice (or positionally and by name).
    DuplicateKey(String),
    /// More positional fields than the kind takes; the first extra one.
    ExtraField(String),
    /// A required field is missing.
    Missing(&'static str),
    /// A field's value is not valid.
    BadValue {
        /// The field.
        field: &'static str,
        /// Its value as given.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
    /// A `\` at the very end, or an unclosed `[`.
    BadSyntax(&'static str),
}

/// A description that could not be parsed: which one and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptionError {
    /// The description as given.
    pub description: String,
    /// What is wrong.
    pub problem: DescriptionProblem,
}

impl fmt::Display for DescriptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad endpoint description '{}': ", self.description)?;
        match &self.problem {
            DescriptionProblem::Empty => f.write_str("it is empty"),
            DescriptionProblem::UnknownKind(kind) => write!(f, "unknown kind '{kind}'"),
            DescriptionProblem::UnknownKey(key) => write!(f, "unknown key '{key}'"),
            DescriptionProblem::DuplicateKey(key) => write!(f, "'{key}' is given twice"),
            DescriptionProblem::ExtraField(field) => write!(f, "unexpected field '{field}'"),
            DescriptionProblem::Missing(field) => write!(f, "{field} is missing"),
            DescriptionProblem::BadValue {
                field,
                value,
                expected,
            } => write!(f, "{field} '{value}' is not {expected}"),
            DescriptionProblem::BadSyntax(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for DescriptionError {}

/// Splits on unescaped colons outside brackets, undoing `\` escapes.
fn tokenize(text: &str) -> Result<Vec<String>, DescriptionProblem> {
    let mut fields = vec![String::new()];
    let mut chars = text.chars();
    let mut in_brackets = false;
    while let Some(c) = chars.next() {
        let field = fields.last_mut().expect("never empty");
        match c {
            '\\' => match chars.next() {
                Some(escaped) => field.push(escaped),
                None => return Err(DescriptionProblem::BadSyntax("it ends with a lone '\\'")),
            },
            '[' if !in_brackets => {
                in_brackets = true;
                field.push(c);
            }
            ']' if in_brackets => {
                in_brackets = false;
                field.push(c);
            }
            ':' if !in_brackets => fields.push(String::new()),
            _ => field.push(c),
        }
    }
    if in_brackets {
        return Err(DescriptionProblem::BadSyntax("a '[' is never closed"));
    }
    Ok(fields)
}

/// The fields of one description: positional values in order, then named ones.
struct Fields {
    values: Vec<(&'static str, String)>,
}

impl Fields {
    /// Sorts `fields` (after the kind) into the `positional` names, in order, and the
    /// `keys` this kind takes.
    fn sort(
        fields: &[String],
        positional: &[&'static str],
        keys: &[&'static str],
    ) -> Result<Fields, DescriptionProblem> {
        let mut values: Vec<(&'static str, String)> = Vec::new();
        let mut next_positional = positional.iter();
        for field in fields {
            let (name, value) = match split_key(field) {
                Some((key, value)) => {
                    let name = positional
                        .iter()
                        .chain(keys)
                        .find(|k| **k == key)
                        .ok_or_else(|| DescriptionProblem::UnknownKey(key.to_string()))?;
                    (*name, value.to_string())
                }
                None => match next_positional.next() {
                    Some(name) => (*name, field.clone()),
                    None => return Err(DescriptionProblem::ExtraField(field.clone())),
                },
            };
            if values.iter().any(|(n, _)| *n == name) {
                return Err(DescriptionProblem::DuplicateKey(name.to_string()));
            }
            values.push((name, value));
        }
        Ok(Fields { values })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    fn required(&self, name: &'static str) -> Result<&str, DescriptionProblem> {
        self.get(name).ok_or(DescriptionProblem::Missing(name))
    }
}

/// `key=value`, when the field is one: a key is a plain word.
fn split_key(field: &str) -> Option<(&str, &str)> {
    let (key, value) = field.split_once('=')?;
    let is_word = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    is_word.then_some((key, value))
}

fn bad(field: &'static str, value: &str, expected: &'static str) -> DescriptionProblem {
    DescriptionProblem::BadValue {
        field,
        value: value.to_string(),
        expected,
    }
}

fn port(fields: &Fields, allow_zero: bool) -> Result<u16, DescriptionProblem> {
    let value = fields.required("port")?;
    match value.parse::<u16>() {
        Ok(0) if !allow_zero => Err(bad("port", value, "a port number from 1 to 65535")),
        Ok(port) => Ok(port),
        Err(_) if allow_zero => Err(bad("port", value, "a port number from 0 to 65535")),
        Err(_) => Err(bad("port", value, "a port number from 1 to 65535")),
    }
}

fn interface(fields: &Fields) -> Result<IpAddr, DescriptionProblem> {
    match fields.get("interface") {
        None => Ok(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        Some(value) => super::bare_host(value)
            .parse()
            .map_err(|_| bad("interface", value, "an IP address")),
    }
}

fn backlog(fields: &Fields) -> Result<Option<u32>, DescriptionProblem> {
    fields
        .get("backlog")
        .map(|value| {
            value
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0 && i32::try_from(*n).is_ok())
                .ok_or_else(|| bad("backlog", value, "a positive number"))
        })
        .transpose()
}

fn timeout(fields: &Fields) -> Result<Option<Duration>, DescriptionProblem> {
    fields
        .get("timeout")
        .map(|value| {
            value
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| bad("timeout", value, "a positive number of seconds"))
        })
        .transpose()
}

fn host(fields: &Fields) -> Result<String, DescriptionProblem> {
    let value = fields.required("host")?;
    let host = super::bare_host(value);
    if host.is_empty() {
        return Err(bad("host", value, "a host name or address"));
    }
    Ok(host.to_string())
}

fn unix_path(fields: &Fields) -> Result<UnixAddress, DescriptionProblem> {
    let value = fields.required("path")?;
    if value.is_empty() || value == "@" {
        return Err(bad("path", value, "a path or an @abstract-name"));
    }
    Ok(UnixAddress::from_arg(value))
}

fn file(fields: &Fields, name: &'static str) -> Result<PathBuf, DescriptionProblem> {
    let value = fields.required(name)?;
    if value.is_empty() {
        return Err(bad(name, value, "a file name"));
    }
    Ok(PathBuf::from(value))
}

/// `privateKey=` and `certKey=`: both, or neither (the default certificate).
fn certificate(fields: &Fields) -> Result<Certificate, DescriptionProblem> {
    match (fields.get("privateKey"), fields.get("certKey")) {
        (None, None) => Ok(Certificate::Default),
        (Some(_), None) => Err(DescriptionProblem::Missing("certKey")),
        (None, Some(_)) => Err(DescriptionProblem::Missing("privateKey")),
        (Some(_), Some(_)) => Ok(Certificate::Files {
            private_key: file(fields, "privateKey")?,
            cert_key: file(fields, "certKey")?,
        }),
    }
}

/// A UNIX socket's `tls=0|1`, and its certificate: the key and certificate files
/// mean TLS too.
fn unix_tls(fields: &Fields) -> Result<Option<Certificate>, DescriptionProblem> {
    let asked = fields
        .get("tls")
        .map(|value| match value {
            "1" | "yes" | "true" => Ok(true),
            "0" | "no" | "false" => Ok(false),
            _ => Err(bad("tls", value, "1 or 0")),
        })
        .transpose()?;
    let certificate = certificate(fields)?;
    match (asked, certificate) {
        (Some(false), Certificate::Files { .. }) => Err(bad(
            "tls",
            "0",
            "1 (or no privateKey/certKey): the key and certificate are for TLS",
        )),
        (Some(false) | None, Certificate::Default) => Ok(None),
        (_, certificate) => Ok(Some(certificate)),
    }
}

/// Splits off the kind and tokenizes the rest.
fn kind_and_fields(description: &str) -> Result<(String, Vec<String>), DescriptionProblem> {
    if description.is_empty() {
        return Err(DescriptionProblem::Empty);
    }
    let mut fields = tokenize(description)?;
    let kind = fields.remove(0);
    Ok((kind, fields))
}

/// Parses a server description (`serverFromString`).
pub fn parse_server(description: &str) -> Result<ServerDescription, DescriptionError> {
    parse_server_fields(description).map_err(|problem| DescriptionError {
        description: description.to_string(),
        problem,
    })
}

fn parse_server_fields(description: &str) -> Result<ServerDescription, DescriptionProblem> {
    let (kind, fields) = kind_and_fields(description)?;
    match kind.as_str() {
        "tcp" => {
            let fields = Fields::sort(&fields, &["port"], &["interface", "backlog"])?;
            Ok(ServerDescription::Tcp {
                port: port(&fields, true)?,
                interface: interface(&fields)?,
                backlog: backlog(&fields)?,
            })
        }
        "unix" => {
            let fields = Fields::sort(
                &fields,
                &["path"],
                &["mode", "tls", "privateKey", "certKey"],
            )?;
            let mode = fields
                .get("mode")
                .map(|value| {
                    u32::from_str_radix(value.trim_start_matches("0o"), 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| bad("mode", value, "octal permission bits like 0660"))
                })
                .transpose()?;
            Ok(ServerDescription::Unix {
                path: unix_path(&fields)?,
                mode,
                tls: unix_tls(&fields)?,
            })
        }
        "ssl" => {
            let fields = Fields::sort(
                &fields,
                &["port"],
                &["interface", "backlog", "privateKey", "certKey"],
            )?;
            Ok(ServerDescription::Ssl {
                port: port(&fields, true)?,
                interface: interface(&fields)?,
                backlog: backlog(&fields)?,
                certificate: certificate(&fields)?,
            })
        }
        _ => Err(DescriptionProblem::UnknownKind(kind)),
    }
}

/// Parses a client description (`clientFromString`).
pub fn parse_client(description: &str) -> Result<ClientDescription, DescriptionError> {
    parse_client_fields(description).map_err(|problem| DescriptionError {
        description: description.to_string(),
        problem,
    })
}

fn parse_client_fields(description: &str) -> Result<ClientDescription, DescriptionProblem> {
    let (kind, fields) = kind_and_fields(description)?;
    match kind.as_str() {
        "tcp" => {
            let fields = Fields::sort(&fields, &["host", "port"], &["timeout"])?;
            Ok(ClientDescription::Tcp {
                host: host(&fields)?,
                port: port(&fields, false)?,
                timeout: timeout(&fields)?,
            })
        }
        "unix" => {
            let fields = Fields::sort(&fields, &["path"], &["timeout"])?;
            Ok(ClientDescription::Unix {
                path: unix_path(&fields)?,
                timeout: timeout(&fields)?,
            })
        }
        "tls" => {
            let fields = Fields::sort(&fields, &["host", "port"], &["trustRoots", "timeout"])?;
            Ok(ClientDescription::Tls {
                host: host(&fields)?,
                port: port(&fields, false)?,
                trust_roots: fields.get("trustRoots").map(PathBuf::from),
                timeout: timeout(&fields)?,
            })
        }
        _ => Err(DescriptionProblem::UnknownKind(kind)),
    }
}

/// What listening by a description opened.
#[derive(Debug)]
pub enum Listening {
    /// A TCP port.
    Tcp(ListeningPort),
    /// A UNIX socket.
    Unix(UnixPort),
}

/// Why listening by a description failed.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Binding or listening failed (TCP or UNIX).
    #[error(transparent)]
    Tcp(#[from] crate::reactor::tcp::CannotListenError),
    /// The TLS certificate or key could not be used (S-13: at listen time).
    #[error(transparent)]
    Tls(#[from] crate::reactor::tls::TlsConfigError),
    /// A TLS description gave no certificate, and the listener has no default one.
    #[error("no certificate to serve TLS with: give privateKey=FILE and certKey=FILE")]
    NoCertificate,
}

impl ServerDescription {
    /// Listens as described, with `factory` making each connection's protocol.
    pub fn listen(
        &self,
        reactor: &Reactor,
        factory: Rc<dyn Factory>,
    ) -> Result<Listening, ListenError> {
        self.listen_with(reactor, factory, None)
    }

    /// Listens as described; a TLS description without its own key and certificate
    /// serves `default` (fails with [`ListenError::NoCertificate`] without one).
    pub fn listen_with(
        &self,
        reactor: &Reactor,
        factory: Rc<dyn Factory>,
        default: Option<&tls::TlsServerConfig>,
    ) -> Result<Listening, ListenError> {
        let tls_factory = |certificate: &Certificate| -> Result<Rc<dyn Factory>, ListenError> {
            let config = match certificate {
                Certificate::Files {
                    private_key,
                    cert_key,
                } => {
                    let identity = tls::ServerIdentity::from_pem_files(cert_key, private_key)?;
                    tls::TlsServerConfig::new(&tls::ServerOptions {
                        identities: vec![identity],
                        resumption: true,
                        ..tls::ServerOptions::default()
                    })?
                }
                Certificate::Default => default.ok_or(ListenError::NoCertificate)?.clone(),
            };
            Ok(tls::server_factory(reactor, &config, factory.clone()))
        };
        match self {
            ServerDescription::Tcp {
                port,
                interface,
                backlog,
            } => {
                let mut options = ListenOptions::default();
                if let Some(backlog) = backlog {
                    options.backlog = i32::try_from(*backlog).unwrap_or(i32::MAX);
                }
                let address = SocketAddr::new(*interface, *port);
                Ok(Listening::Tcp(
                    reactor.listen_tcp_with(address, factory, options)?,
                ))
            }
            ServerDescription::Unix { path, mode, tls } => {
                let factory = match tls {
                    Some(certificate) => tls_factory(certificate)?,
                    None => factory.clone(),
                };
                // As Twisted's UNIX server endpoint (its lockfile default): a socket file
                // left by a server that is gone is taken over, a live one never (U-02).
                let options = UnixListenOptions {
                    mode: mode.unwrap_or(unix::DEFAULT_MODE),
                    remove_stale: true,
                    ..UnixListenOptions::default()
                };
                Ok(Listening::Unix(reactor.listen_unix_with(
                    path.clone(),
                    factory,
                    options,
                )?))
            }
            ServerDescription::Ssl {
                port,
                interface,
                backlog,
                certificate,
            } => {
                let factory = tls_factory(certificate)?;
                let mut options = ListenOptions::default();
                if let Some(backlog) = backlog {
                    options.backlog = i32::try_from(*backlog).unwrap_or(i32::MAX);
                }
                let address = SocketAddr::new(*interface, *port);
                Ok(Listening::Tcp(
                    reactor.listen_tcp_with(address, factory, options)?,
                ))
            }
        }
    }
}

impl ClientDescription {
    /// Connects as described; see [`HostnameEndpoint::connect`].
    pub fn connect(&self, reactor: &Reactor, factory: Rc<dyn Factory>) -> Deferred<Connection> {
        match self {
            ClientDescription::Tcp {
                host,
                port,
                timeout,
            } => {
                let mut options = EndpointOptions::default();
                if timeout.is_some() {
                    options.attempt_timeout = *timeout;
                }
                HostnameEndpoint::new(reactor, host.clone(), *port)
                    .with_options(options)
                    .connect(factory)
            }
            ClientDescription::Unix { path, timeout } => {
                let mut endpoint = UnixEndpoint::new(reactor, path.clone());
                if timeout.is_some() {
                    endpoint = endpoint.with_timeout(*timeout);
                }
                endpoint.connect(factory)
            }
            ClientDescription::Tls {
                host,
                port,
                trust_roots,
                timeout,
            } => {
                // Reading the trust roots (the system's store: many files) blocks, so it
                // runs on a worker thread.
                let roots = trust_roots.clone();
                let config = reactor.defer_to_thread(move || {
                    let verify = match roots {
                        Some(path) => tls::trust_roots(&path)?,
                        None => tls::Verify::System,
                    };
                    tls::TlsClientConfig::new(&tls::ClientOptions {
                        verify,
                        resumption: true,
                        ..tls::ClientOptions::default()
                    })
                });
                let (reactor, host, port, timeout) =
                    (reactor.clone(), host.clone(), *port, *timeout);
                config.then(move |config| {
                    let config = match config {
                        Ok(config) => config,
                        Err(failure) => return Step::Fail(failure),
                    };
                    // The connection counts as made once the handshake verified the
                    // server.
                    let factory =
                        match tls::checked_client_factory(&reactor, &config, &host, factory) {
                            Ok(factory) => factory,
                            Err(error) => return Step::Fail(Failure::new(error)),
                        };
                    let mut options = EndpointOptions::default();
                    if timeout.is_some() {
                        options.attempt_timeout = timeout;
                    }
                    Step::Wait(
                        HostnameEndpoint::new(&reactor, host, port)
                            .with_options(options)
                            .connect_checked(factory),
                    )
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem_of_server(text: &str) -> DescriptionProblem {
        parse_server(text).unwrap_err().problem
    }

    fn problem_of_client(text: &str) -> DescriptionProblem {
        parse_client(text).unwrap_err().problem
    }

    #[test]
    fn e09_server_tcp_with_keys_in_any_order() {
        let expected = ServerDescription::Tcp {
            port: 8080,
            interface: "127.0.0.1".parse().unwrap(),
            backlog: Some(50),
        };
        assert_eq!(
            parse_server("tcp:8080:interface=127.0.0.1:backlog=50").unwrap(),
            expected
        );
        assert_eq!(
            parse_server("tcp:backlog=50:interface=127.0.0.1:8080").unwrap(),
            expected
        );
        assert_eq!(
            parse_server("tcp:port=8080:backlog=50:interface=127.0.0.1").unwrap(),
            expected
        );
        assert_eq!(
            parse_server("tcp:0").unwrap(),
            ServerDescription::Tcp {
                port: 0,
                interface: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                backlog: None,
            }
        );
    }

    #[test]
    fn e09_ipv6_interfaces_in_brackets_or_escaped() {
        let v6: IpAddr = "::1".parse().unwrap();
        for text in ["tcp:80:interface=[::1]", r"tcp:80:interface=\:\:1"] {
            match parse_server(text).unwrap() {
                ServerDescription::Tcp { interface, .. } => assert_eq!(interface, v6, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert_eq!(
            parse_client("tcp:[::1]:443:timeout=2.5").unwrap(),
            ClientDescription::Tcp {
                host: "::1".into(),
                port: 443,
                timeout: Some(Duration::from_millis(2500)),
            }
        );
    }

    #[test]
    fn e09_unix_paths_modes_and_abstract_names() {
        assert_eq!(
            parse_server(r"unix:/tmp/a\:b.sock:mode=0660").unwrap(),
            ServerDescription::Unix {
                path: UnixAddress::Path("/tmp/a:b.sock".into()),
                mode: Some(0o660),
                tls: None,
            }
        );
        assert_eq!(
            parse_server("unix:@chat").unwrap(),
            ServerDescription::Unix {
                path: UnixAddress::Abstract(b"chat"[..].into()),
                mode: None,
                tls: None,
            }
        );
        assert_eq!(
            parse_client("unix:/run/db.sock").unwrap(),
            ClientDescription::Unix {
                path: UnixAddress::Path("/run/db.sock".into()),
                timeout: None,
            }
        );
        assert_eq!(
            problem_of_server("unix:/x:mode=999"),
            bad("mode", "999", "octal permission bits like 0660")
        );
    }

    #[test]
    fn e09_ssl_server_and_tls_client() {
        assert_eq!(
            parse_server("ssl:443:certKey=cert.pem:privateKey=key.pem").unwrap(),
            ServerDescription::Ssl {
                port: 443,
                interface: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                backlog: None,
                certificate: Certificate::Files {
                    private_key: "key.pem".into(),
                    cert_key: "cert.pem".into(),
                },
            }
        );
        assert_eq!(
            problem_of_server("ssl:443:certKey=cert.pem"),
            DescriptionProblem::Missing("privateKey")
        );
        assert_eq!(
            problem_of_server("ssl:443:privateKey=key.pem"),
            DescriptionProblem::Missing("certKey")
        );
        assert_eq!(
            parse_server("ssl:0").unwrap().certificate(),
            Some(&Certificate::Default)
        );
        // TLS over a UNIX socket: asked for, or implied by the files.
        assert_eq!(
            parse_server("unix:/run/t.sock:tls=1")
                .unwrap()
                .certificate(),
            Some(&Certificate::Default)
        );
        assert_eq!(
            parse_server("unix:/run/t.sock:tls=0")
                .unwrap()
                .certificate(),
            None
        );
        assert!(matches!(
            parse_server("unix:/run/t.sock:privateKey=k.pem:certKey=c.pem")
                .unwrap()
                .certificate(),
            Some(Certificate::Files { .. })
        ));
        assert_eq!(
            problem_of_server("unix:/run/t.sock:tls=maybe"),
            bad("tls", "maybe", "1 or 0")
        );
        assert_eq!(
            problem_of_server("unix:/run/t.sock:certKey=c.pem"),
            DescriptionProblem::Missing("privateKey")
        );
        assert_eq!(
            parse_client("tls:example.com:443:trustRoots=/etc/ca").unwrap(),
            ClientDescription::Tls {
                host: "example.com".into(),
                port: 443,
                trust_roots: Some("/etc/ca".into()),
                timeout: None,
            }
        );
    }

    #[test]
    fn e09_server_descriptions_print_as_they_parse() {
        for text in [
            "tcp:8000",
            "tcp:0:interface=127.0.0.1:backlog=5",
            "tcp:80:interface=[::1]",
            r"unix:/tmp/a\:b.sock:mode=0660",
            "unix:@talk:tls=1",
            "unix:/run/t.sock:privateKey=k.pem:certKey=c.pem",
            "ssl:8443",
            "ssl:8443:privateKey=k.pem:certKey=c.pem:interface=127.0.0.1",
        ] {
            let parsed = parse_server(text).unwrap();
            assert_eq!(parsed.to_string(), text);
            assert_eq!(parse_server(&parsed.to_string()).unwrap(), parsed);
        }
    }

    #[test]
    fn e09_errors_name_the_bad_kind_key_or_field() {
        assert_eq!(
            problem_of_server("udp:53"),
            DescriptionProblem::UnknownKind("udp".into())
        );
        assert_eq!(
            problem_of_client("ssl:host:443"),
            DescriptionProblem::UnknownKind("ssl".into())
        );
        assert_eq!(
            problem_of_server("tcp:80:colour=blue"),
            DescriptionProblem::UnknownKey("colour".into())
        );
        assert_eq!(
            problem_of_client("tcp:host:80:extra"),
            DescriptionProblem::ExtraField("extra".into())
        );
        assert_eq!(
            problem_of_client("tcp:host:99999"),
            bad("port", "99999", "a port number from 1 to 65535")
        );
        assert_eq!(
            problem_of_client("tcp:host:0"),
            bad("port", "0", "a port number from 1 to 65535")
        );
        assert_eq!(
            problem_of_client("tcp:host"),
            DescriptionProblem::Missing("port")
        );
        assert_eq!(
            problem_of_server("tcp:80:port=81"),
            DescriptionProblem::DuplicateKey("port".into())
        );
        assert_eq!(
            problem_of_server("tcp:80:interface=nowhere"),
            bad("interface", "nowhere", "an IP address")
        );
        assert_eq!(
            problem_of_client("tcp:h:80:timeout=-1"),
            bad("timeout", "-1", "a positive number of seconds")
        );
        assert_eq!(problem_of_server(""), DescriptionProblem::Empty);
        assert!(matches!(
            problem_of_client(r"tcp:[::1:80"),
            DescriptionProblem::BadSyntax(_)
        ));
        assert!(matches!(
            problem_of_client("tcp:h:80\\"),
            DescriptionProblem::BadSyntax(_)
        ));
        let message = parse_server("tcp:80:colour=blue").unwrap_err().to_string();
        assert!(message.contains("'tcp:80:colour=blue'"), "{message}");
        assert!(message.contains("unknown key 'colour'"), "{message}");
    }
}
