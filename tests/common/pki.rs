//! Certificates the tests make with rcgen: a CA and the leaves it signs, as rustls
//! identities for in-process servers or as PEM files for the binary.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, date_time_ymd};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use twistctl::reactor::tls::ServerIdentity;

/// A day, as `(year, month, day)`.
pub type Day = (i32, u8, u8);

/// Valid from 2020 to 2090: a certificate that is in date whenever the tests run.
pub const IN_DATE: (Day, Day) = ((2020, 1, 1), (2090, 1, 1));

/// The parameters of a CA named `name`.
pub fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params
}

/// The parameters of a leaf for `names` (the first is also its common name), valid
/// between the two days.
pub fn leaf_params(names: &[&str], from: Day, to: Day) -> CertificateParams {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names.clone()).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, names[0].clone());
    params.not_before = date_time_ymd(from.0, from.1, from.2);
    params.not_after = date_time_ymd(to.0, to.1, to.2);
    params
}

/// A certificate and its key.
pub struct Signed {
    /// The certificate.
    pub cert: rcgen::Certificate,
    /// Its key.
    pub key: KeyPair,
}

impl Signed {
    /// A self-signed certificate made from `params`.
    pub fn self_signed(params: CertificateParams) -> Signed {
        let key = KeyPair::generate().expect("a key");
        let cert = params.self_signed(&key).expect("a self-signed certificate");
        Signed { cert, key }
    }

    /// The certificate (alone, as its chain) and key, for a rustls server.
    pub fn identity(&self) -> ServerIdentity {
        ServerIdentity {
            chain: vec![self.cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der())),
        }
    }

    /// The certificate's DER.
    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// Writes `NAME.crt` and `NAME.key` (PEM) into `dir`; their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert, self.cert.pem()).expect("write the certificate");
        std::fs::write(&key, self.key.serialize_pem()).expect("write the key");
        (cert, key)
    }
}

/// A test CA: its certificate, and an issuer for leaves.
pub struct TestCa {
    /// The CA's own certificate and key.
    pub ca: Signed,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("a key");
        let cert = ca_params(name).self_signed(&key).expect("the CA");
        let issuer_key = KeyPair::from_pem(&key.serialize_pem()).expect("the CA's key again");
        TestCa {
            ca: Signed { cert, key },
            issuer: Issuer::new(ca_params(name), issuer_key),
        }
    }

    /// A leaf made from `params`, signed by this CA.
    pub fn sign(&self, params: CertificateParams) -> Signed {
        let key = KeyPair::generate().expect("a key");
        let cert = params.signed_by(&key, &self.issuer).expect("a leaf");
        Signed { cert, key }
    }

    /// An in-date leaf for `names`.
    pub fn leaf(&self, names: &[&str]) -> Signed {
        self.sign(leaf_params(names, IN_DATE.0, IN_DATE.1))
    }

    /// Writes the CA's certificate to `DIR/ca.pem`; its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, self.ca.cert.pem()).expect("write the CA");
        path
    }
}

/// A blocking rustls client for `name` that trusts `ca` alone (TLS 1.2 and 1.3, *ring*),
/// for a test to speak TLS to a server under test over any stream.
pub fn client_connection(ca: CertificateDer<'static>, name: &str) -> rustls::ClientConnection {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).expect("the CA as a root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from(name.to_string()).expect("a server name");
    rustls::ClientConnection::new(Arc::new(config), name).expect("a TLS client")
}
