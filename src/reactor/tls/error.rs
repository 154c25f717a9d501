//! Why a TLS handshake or connection failed, typed so that commands can say it in words
//! (S-04): certificate problems are told apart from each other and from protocol
//! failures and alerts the peer sent.

use std::fmt;
use std::path::PathBuf;
use std::rc::Rc;

use rustls::pki_types::CertificateDer;
use rustls::{AlertDescription, CertificateError};

/// What went wrong in a TLS connection (S-04).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsFailure {
    /// The peer's certificate has expired; `not_after` in seconds since the epoch, when
    /// known.
    Expired {
        /// When it stopped being valid.
        not_after: Option<i64>,
    },
    /// The peer's certificate is not valid yet.
    NotYetValid {
        /// When it starts being valid.
        not_before: Option<i64>,
    },
    /// The chain leads to no trusted root: self-signed, or issued by an unknown CA.
    UnknownIssuer,
    /// The certificate is not valid for the name (or IP address) that was asked for.
    NameMismatch {
        /// The name asked for.
        expected: String,
        /// The names the certificate is valid for, when known.
        presented: Vec<String>,
    },
    /// A signature in the chain (or of the handshake) does not verify.
    BadSignature,
    /// The certificate has been revoked.
    Revoked,
    /// The leaf's fingerprint is not one of the pinned ones.
    NotPinned,
    /// Any other problem with the certificate (bad encoding, wrong purpose, ...).
    BadCertificate(String),
    /// The peer presented no certificate.
    NoCertificate,
    /// The peer sent this fatal alert (its name, e.g. `handshake_failure`).
    PeerAlert(String),
    /// The TLS exchange itself failed: no common version or cipher, a malformed or
    /// unexpected message, a record that does not decrypt.
    Protocol(String),
}

impl TlsFailure {
    /// True for a failure of certificate verification (as opposed to the protocol or
    /// an alert from the peer).
    pub fn is_verification(&self) -> bool {
        matches!(
            self,
            TlsFailure::Expired { .. }
                | TlsFailure::NotYetValid { .. }
                | TlsFailure::UnknownIssuer
                | TlsFailure::NameMismatch { .. }
                | TlsFailure::BadSignature
                | TlsFailure::Revoked
                | TlsFailure::NotPinned
                | TlsFailure::BadCertificate(_)
                | TlsFailure::NoCertificate
        )
    }

    /// Classifies a rustls error.
    pub fn from_rustls(error: &rustls::Error) -> TlsFailure {
        match error {
            rustls::Error::InvalidCertificate(e) => TlsFailure::from_certificate_error(e),
            rustls::Error::NoCertificatesPresented => TlsFailure::NoCertificate,
            rustls::Error::AlertReceived(alert) => TlsFailure::PeerAlert(alert_name(*alert)),
            rustls::Error::DecryptError => {
                TlsFailure::Protocol("a record did not decrypt".to_string())
            }
            rustls::Error::PeerIncompatible(why) => {
                TlsFailure::Protocol(format!("the peer is incompatible: {why:?}"))
            }
            rustls::Error::PeerMisbehaved(why) => {
                TlsFailure::Protocol(format!("the peer misbehaved: {why:?}"))
            }
            other => TlsFailure::Protocol(other.to_string()),
        }
    }

    fn from_certificate_error(error: &CertificateError) -> TlsFailure {
        match error {
            CertificateError::Expired => TlsFailure::Expired { not_after: None },
            CertificateError::ExpiredContext { not_after, .. } => TlsFailure::Expired {
                not_after: Some(not_after.as_secs() as i64),
            },
            CertificateError::NotValidYet => TlsFailure::NotYetValid { not_before: None },
            CertificateError::NotValidYetContext { not_before, .. } => TlsFailure::NotYetValid {
                not_before: Some(not_before.as_secs() as i64),
            },
            CertificateError::UnknownIssuer => TlsFailure::UnknownIssuer,
            CertificateError::NotValidForName => TlsFailure::NameMismatch {
                expected: String::new(),
                presented: Vec::new(),
            },
            CertificateError::NotValidForNameContext {
                expected,
                presented,
            } => TlsFailure::NameMismatch {
                expected: expected.to_str().into_owned(),
                presented: presented.clone(),
            },
            CertificateError::BadSignature => TlsFailure::BadSignature,
            CertificateError::Revoked => TlsFailure::Revoked,
            CertificateError::Other(other) if other.0.is::<NotPinnedError>() => {
                TlsFailure::NotPinned
            }
            other => TlsFailure::BadCertificate(format!("{other:?}")),
        }
    }
}

/// An alert's name as the TLS specification spells it (`handshake_failure`).
fn alert_name(alert: AlertDescription) -> String {
    let debug = format!("{alert:?}");
    let mut name = String::with_capacity(debug.len() + 4);
    for (i, c) in debug.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                name.push('_');
            }
            name.push(c.to_ascii_lowercase());
        } else {
            name.push(c);
        }
    }
    name
}

fn date(seconds: i64) -> String {
    jiff::Timestamp::from_second(seconds)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| seconds.to_string())
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsFailure::Expired { not_after: None } => f.write_str("certificate has expired"),
            TlsFailure::Expired {
                not_after: Some(at),
            } => write!(f, "certificate has expired (on {})", date(*at)),
            TlsFailure::NotYetValid { not_before: None } => {
                f.write_str("certificate is not yet valid")
            }
            TlsFailure::NotYetValid {
                not_before: Some(at),
            } => write!(f, "certificate is not yet valid (from {})", date(*at)),
            TlsFailure::UnknownIssuer => {
                f.write_str("certificate issuer is unknown (self-signed or an untrusted CA)")
            }
            TlsFailure::NameMismatch {
                expected,
                presented,
            } => {
                f.write_str("certificate name mismatch")?;
                if !expected.is_empty() {
                    write!(f, ": not valid for {expected}")?;
                }
                if !presented.is_empty() {
                    write!(f, " (valid for {})", presented.join(", "))?;
                }
                Ok(())
            }
            TlsFailure::BadSignature => f.write_str("certificate has a bad signature"),
            TlsFailure::Revoked => f.write_str("certificate has been revoked"),
            TlsFailure::NotPinned => {
                f.write_str("certificate does not match the pinned fingerprint")
            }
            TlsFailure::BadCertificate(what) => write!(f, "bad certificate: {what}"),
            TlsFailure::NoCertificate => f.write_str("the peer presented no certificate"),
            TlsFailure::PeerAlert(alert) => {
                write!(f, "handshake failure: the peer sent alert {alert}")
            }
            TlsFailure::Protocol(what) => write!(f, "TLS protocol error: {what}"),
        }
    }
}

/// A TLS failure and the certificate chain the peer presented, if it presented one
/// (leaf first, DER): a client that refuses a certificate can still show its
/// fingerprint, to offer trusting it.
#[derive(Debug, Clone)]
pub struct TlsError {
    /// What went wrong.
    pub failure: TlsFailure,
    /// The chain the peer presented (empty if none reached us).
    pub presented: Rc<[CertificateDer<'static>]>,
}

impl TlsError {
    /// A failure without a presented chain.
    pub fn new(failure: TlsFailure) -> TlsError {
        TlsError {
            failure,
            presented: Rc::from(Vec::new()),
        }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.failure.fmt(f)
    }
}

impl std::error::Error for TlsError {}

/// The marker error of a pinned-fingerprint mismatch, inside rustls's
/// `CertificateError::Other`.
#[derive(Debug)]
pub(super) struct NotPinnedError;

impl fmt::Display for NotPinnedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("certificate does not match the pinned fingerprint")
    }
}

impl std::error::Error for NotPinnedError {}

/// A TLS configuration could not be made: a file is missing or holds no usable
/// certificate or key, a name is invalid, or no certificate was given to a server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no PEM item of the kind wanted.
    #[error("{path}: no {what} found (expected PEM)")]
    Missing {
        /// The file.
        path: PathBuf,
        /// "certificate" or "private key".
        what: &'static str,
    },
    /// A PEM item could not be parsed or used.
    #[error("{what}: {reason}")]
    Invalid {
        /// What was being read.
        what: String,
        /// Why it was refused.
        reason: String,
    },
    /// The system's trust store held no usable certificate.
    #[error("no trusted root certificates found in the system's trust store")]
    NoSystemRoots,
    /// A server was configured without a certificate (S-13).
    #[error("a TLS server needs a certificate and key")]
    NoCertificate,
    /// A name that is neither a DNS name nor an IP address.
    #[error("invalid TLS server name {0:?}")]
    BadServerName(String),
    /// A fingerprint that is not 32 hex pairs.
    #[error("invalid SHA-256 fingerprint {0:?}: expected 32 hex pairs (AB:CD:...)")]
    BadFingerprint(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

impl From<TlsConfigError> for crate::reactor::failure::Failure {
    fn from(error: TlsConfigError) -> Self {
        crate::reactor::failure::Failure::new(error)
    }
}
