//! Client and server TLS configurations: what a client trusts (S-05), what a server
//! presents (S-13), and the protocol choices both may pin (versions, suites, groups,
//! ALPN, resumption).
//!
//! A configuration is built once, before connecting or listening (it may read files
//! and the system's trust store), and shared by every connection made with it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CipherSuite, ClientConfig, DigitallySignedStruct, NamedGroup, RootCertStore, ServerConfig,
    SignatureScheme,
};

use super::cert::{CertificateInfo, Fingerprint};
use super::error::{NotPinnedError, TlsConfigError};

/// The crypto provider every configuration uses; see CONTRIBUTING.md for why this one.
fn base_provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Protocol choices shared by clients and servers. The defaults are rustls's: TLS 1.2
/// and 1.3, every suite and group the provider offers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Protocols {
    /// Refuse anything but TLS 1.3.
    pub tls13_only: bool,
    /// Only these cipher suites, in this order of preference (`None`: all).
    pub cipher_suites: Option<Vec<CipherSuite>>,
    /// Only these key exchange groups (`None`: all).
    pub groups: Option<Vec<NamedGroup>>,
    /// ALPN protocols to offer (client) or accept (server), in order of preference.
    pub alpn: Vec<Vec<u8>>,
}

impl Protocols {
    fn provider(&self) -> Result<Arc<CryptoProvider>, TlsConfigError> {
        let mut provider = base_provider();
        if let Some(suites) = &self.cipher_suites {
            provider
                .cipher_suites
                .retain(|s| suites.contains(&s.suite()));
            provider
                .cipher_suites
                .sort_by_key(|s| suites.iter().position(|w| *w == s.suite()));
        }
        if let Some(groups) = &self.groups {
            provider.kx_groups.retain(|g| groups.contains(&g.name()));
        }
        if provider.cipher_suites.is_empty() || provider.kx_groups.is_empty() {
            return Err(TlsConfigError::Invalid {
                what: "TLS parameters".to_string(),
                reason: "no cipher suite or key exchange group left".to_string(),
            });
        }
        Ok(Arc::new(provider))
    }

    fn versions(&self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        if self.tls13_only {
            &TLS13_ONLY
        } else {
            rustls::DEFAULT_VERSIONS
        }
    }
}

/// How a client checks the server's certificate (S-05).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Verify {
    /// The chain must lead to a root of the system's trust store, and the certificate
    /// must match the name asked for.
    #[default]
    System,
    /// As `System`, with the CA certificates of this PEM file instead.
    CaFile(PathBuf),
    /// As `System`, with these CA certificates (DER) instead.
    Roots(Vec<CertificateDer<'static>>),
    /// Only the leaf's SHA-256 fingerprint counts: it must be one of these. Chain and
    /// name are not checked (like ssh host keys).
    Pinned(Vec<Fingerprint>),
    /// No verification at all (explicit). The handshake's signature is still checked
    /// against the presented key, and the chain is still exposed.
    Off,
}

/// Everything a TLS client needs to know besides the server's name.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// How the server's certificate is checked.
    pub verify: Verify,
    /// Versions, suites, groups, ALPN.
    pub protocols: Protocols,
    /// Offer session resumption (rustls's default cache) or not.
    pub resumption: bool,
}

/// A client configuration, shared by the connections made with it.
#[derive(Clone)]
pub struct TlsClientConfig {
    config: Arc<ClientConfig>,
    verifier: Arc<dyn ServerCertVerifier>,
}

impl fmt::Debug for TlsClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClientConfig").finish_non_exhaustive()
    }
}

impl TlsClientConfig {
    /// Builds a configuration; reads the CA file or the system's trust store now.
    pub fn new(options: &ClientOptions) -> Result<TlsClientConfig, TlsConfigError> {
        let provider = options.protocols.provider()?;
        let algorithms = provider.signature_verification_algorithms;
        let roots = |certs: Vec<CertificateDer<'static>>, what: &str| {
            let mut store = RootCertStore::empty();
            for cert in certs {
                store.add(cert).map_err(|e| TlsConfigError::Invalid {
                    what: what.to_string(),
                    reason: e.to_string(),
                })?;
            }
            Ok::<_, TlsConfigError>(store)
        };
        let webpki = |store: RootCertStore| {
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(store),
                provider.clone(),
            )
            .build()
            .map(|v| v as Arc<dyn ServerCertVerifier>)
            .map_err(|e| TlsConfigError::Invalid {
                what: "trust roots".to_string(),
                reason: e.to_string(),
            })
        };
        let verifier: Arc<dyn ServerCertVerifier> = match &options.verify {
            Verify::System => webpki(system_roots()?)?,
            Verify::CaFile(path) => webpki(roots(read_certificates(path)?, &path_name(path))?)?,
            Verify::Roots(certs) => webpki(roots(certs.clone(), "trust roots")?)?,
            Verify::Pinned(pins) => Arc::new(Unverified {
                pins: Some(pins.clone()),
                algorithms,
            }),
            Verify::Off => Arc::new(Unverified {
                pins: None,
                algorithms,
            }),
        };
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(options.protocols.versions())?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        config.alpn_protocols = options.protocols.alpn.clone();
        if !options.resumption {
            config.resumption = rustls::client::Resumption::disabled();
        }
        Ok(TlsClientConfig {
            config: Arc::new(config),
            verifier,
        })
    }

    /// A connection to `server_name` (a DNS name, sent as SNI, or an IP literal, not
    /// sent) and the recorder of the chain the server presents, which the connection
    /// reports even when verification refuses it.
    pub(super) fn connection(
        &self,
        server_name: &ServerName<'static>,
    ) -> Result<(rustls::ClientConnection, Arc<ChainRecorder>), TlsConfigError> {
        let recorder = Arc::new(ChainRecorder {
            inner: self.verifier.clone(),
            seen: Mutex::new(Vec::new()),
        });
        let mut config = (*self.config).clone();
        config
            .dangerous()
            .set_certificate_verifier(recorder.clone());
        let mut connection = rustls::ClientConnection::new(Arc::new(config), server_name.clone())?;
        connection.set_buffer_limit(None);
        Ok((connection, recorder))
    }
}

/// Parses a host as a TLS server name: an IP literal (IPv6 with or without brackets)
/// or a DNS name.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsConfigError> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(bare.to_string())
        .map_err(|_| TlsConfigError::BadServerName(host.to_string()))
}

/// Remembers the chain the server presented, then asks the real verifier.
pub(super) struct ChainRecorder {
    inner: Arc<dyn ServerCertVerifier>,
    seen: Mutex<Vec<CertificateDer<'static>>>,
}

impl ChainRecorder {
    /// The chain presented (leaf first), if the handshake got that far.
    pub(super) fn take(&self) -> Vec<CertificateDer<'static>> {
        self.seen
            .lock()
            .map(|mut seen| std::mem::take(&mut *seen))
            .unwrap_or_default()
    }
}

impl fmt::Debug for ChainRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChainRecorder")
    }
}

impl ServerCertVerifier for ChainRecorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut seen) = self.seen.lock() {
            seen.clear();
            seen.push(end_entity.clone().into_owned());
            seen.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

/// No chain or name check: either nothing (verification off) or the leaf's fingerprint
/// against pins. The handshake signature is checked in both cases, so the peer must
/// hold the presented certificate's key.
#[derive(Debug)]
struct Unverified {
    pins: Option<Vec<Fingerprint>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.pins {
            Some(pins) if !pins.contains(&Fingerprint::of(end_entity)) => {
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Other(rustls::OtherError(Arc::new(NotPinnedError))),
                ))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn system_roots() -> Result<RootCertStore, TlsConfigError> {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        log::debug!("system trust store: {error}");
    }
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(TlsConfigError::NoSystemRoots);
    }
    Ok(store)
}

fn path_name(path: &Path) -> String {
    path.display().to_string()
}

/// Every certificate of a PEM file, in order.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let pem = std::fs::read(path).map_err(|source| TlsConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsConfigError::Invalid {
            what: path_name(path),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsConfigError::Missing {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// A certificate chain and its private key: what a server presents (S-13).
#[derive(Debug)]
pub struct ServerIdentity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for ServerIdentity {
    fn clone(&self) -> Self {
        ServerIdentity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// A self-signed certificate and key made by [`ServerIdentity::generate`], as PEM, for
/// a tool to store and load again.
#[derive(Debug, Clone)]
pub struct GeneratedPem {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8). Store it readable by its owner only.
    pub key_pem: String,
}

impl ServerIdentity {
    /// Reads a PEM chain (leaf first) and a PEM private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<ServerIdentity, TlsConfigError> {
        let chain = read_certificates(cert)?;
        let pem = std::fs::read(key).map_err(|source| TlsConfigError::Read {
            path: key.to_path_buf(),
            source,
        })?;
        let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsConfigError::Missing {
            path: key.to_path_buf(),
            what: "private key",
        })?;
        Ok(ServerIdentity { chain, key })
    }

    /// Parses a PEM chain and key held in memory.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ServerIdentity, TlsConfigError> {
        let invalid = |what: &str, e: rustls::pki_types::pem::Error| TlsConfigError::Invalid {
            what: what.to_string(),
            reason: e.to_string(),
        };
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("certificate", e))?;
        if chain.is_empty() {
            return Err(TlsConfigError::Invalid {
                what: "certificate".to_string(),
                reason: "no PEM certificate".to_string(),
            });
        }
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| invalid("key", e))?;
        Ok(ServerIdentity { chain, key })
    }

    /// Generates a self-signed ECDSA P-256 certificate for `names` (DNS names or IP
    /// literals; the first is the subject's common name).
    pub fn generate(names: &[String]) -> Result<(ServerIdentity, GeneratedPem), TlsConfigError> {
        let generated = rcgen::generate_simple_self_signed(names.to_vec()).map_err(|e| {
            TlsConfigError::Invalid {
                what: "generated certificate".to_string(),
                reason: e.to_string(),
            }
        })?;
        let pem = GeneratedPem {
            cert_pem: generated.cert.pem(),
            key_pem: generated.signing_key.serialize_pem(),
        };
        let identity = ServerIdentity::from_pem(&pem.cert_pem, &pem.key_pem)?;
        Ok((identity, pem))
    }

    /// The leaf's SHA-256 fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.chain[0])
    }
}

/// Everything a TLS server needs.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// The certificates to present; the first is the default, the others are picked by
    /// SNI when the client asks for a name they are valid for (S-13).
    pub identities: Vec<ServerIdentity>,
    /// Versions, suites, groups, ALPN.
    pub protocols: Protocols,
    /// Session resumption: keep a session cache and send TLS 1.3 tickets (rustls's
    /// defaults), or neither.
    pub resumption: bool,
}

/// A server configuration, shared by the connections accepted with it.
#[derive(Clone)]
pub struct TlsServerConfig {
    config: Arc<ServerConfig>,
}

impl fmt::Debug for TlsServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsServerConfig").finish_non_exhaustive()
    }
}

impl TlsServerConfig {
    /// Builds a configuration; fails without a certificate, or when a key does not
    /// match its certificate (S-13: at listen time, not per connection).
    pub fn new(options: &ServerOptions) -> Result<TlsServerConfig, TlsConfigError> {
        if options.identities.is_empty() {
            return Err(TlsConfigError::NoCertificate);
        }
        let provider = options.protocols.provider()?;
        let mut keys = Vec::new();
        for identity in &options.identities {
            if identity.chain.is_empty() {
                return Err(TlsConfigError::NoCertificate);
            }
            let key = CertifiedKey::from_der(
                identity.chain.clone(),
                identity.key.clone_key(),
                &provider,
            )?;
            let names = CertificateInfo::parse(&identity.chain[0])
                .map(|info| info.sans())
                .unwrap_or_default();
            keys.push((names, Arc::new(key)));
        }
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(options.protocols.versions())?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SniResolver { keys }));
        config.alpn_protocols = options.protocols.alpn.clone();
        if !options.resumption {
            config.send_tls13_tickets = 0;
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        }
        Ok(TlsServerConfig {
            config: Arc::new(config),
        })
    }

    pub(super) fn connection(&self) -> Result<rustls::ServerConnection, TlsConfigError> {
        let mut connection = rustls::ServerConnection::new(self.config.clone())?;
        connection.set_buffer_limit(None);
        Ok(connection)
    }
}

/// Picks the certificate valid for the client's SNI name, the first one otherwise.
#[derive(Debug)]
struct SniResolver {
    keys: Vec<(Vec<String>, Arc<CertifiedKey>)>,
}

fn name_matches(pattern: &str, name: &str) -> bool {
    if pattern.eq_ignore_ascii_case(name) {
        return true;
    }
    match (pattern.strip_prefix("*."), name.split_once('.')) {
        (Some(suffix), Some((_, rest))) => suffix.eq_ignore_ascii_case(rest),
        _ => false,
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello.server_name().and_then(|name| {
            self.keys
                .iter()
                .find(|(names, _)| names.iter().any(|n| name_matches(n, name)))
        });
        chosen.or(self.keys.first()).map(|(_, key)| key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_names_match_exactly_or_by_one_wildcard_label() {
        assert!(name_matches("localhost", "LOCALHOST"));
        assert!(name_matches("*.example.com", "www.example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("example.com", "www.example.com"));
    }

    #[test]
    fn server_names_accept_dns_names_and_ip_literals() {
        assert!(matches!(
            server_name("localhost"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("[::1]"), Ok(ServerName::IpAddress(_))));
        let error = server_name("bad name!").unwrap_err();
        assert!(error.to_string().contains("bad name!"), "{error}");
    }

    #[test]
    fn s13_a_server_without_a_certificate_is_refused_when_configured() {
        let error = TlsServerConfig::new(&ServerOptions::default()).unwrap_err();
        assert!(matches!(error, TlsConfigError::NoCertificate), "{error}");
    }
}
