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
    /// Any other problem with the certificate (bad encoding, wrong purpose, a CA
    /// certificate as the leaf, ...), in words.
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
            rustls::Error::PeerIncompatible(why) => TlsFailure::Protocol(format!(
                "the peer is incompatible: {}",
                words(&format!("{why:?}"))
            )),
            rustls::Error::PeerMisbehaved(why) => TlsFailure::Protocol(format!(
                "the peer misbehaved: {}",
                words(&format!("{why:?}"))
            )),
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
            other => TlsFailure::BadCertificate(certificate_words(other)),
        }
    }
}

/// What is wrong with a certificate, in words, for the problems rustls has no
/// `TlsFailure` of its own for. rustls's and webpki's errors print as Rust names
/// (`Other(OtherError(CaUsedAsEndEntity))`): users get a sentence instead.
fn certificate_words(error: &CertificateError) -> String {
    let said = match error {
        CertificateError::BadEncoding => "certificate is malformed",
        CertificateError::UnhandledCriticalExtension => {
            "certificate has a critical extension that is not supported"
        }
        CertificateError::UnknownRevocationStatus => "certificate revocation status is unknown",
        CertificateError::ExpiredRevocationList
        | CertificateError::ExpiredRevocationListContext { .. } => {
            "certificate revocation list has expired"
        }
        #[allow(deprecated)] // still what older verifiers return
        CertificateError::UnsupportedSignatureAlgorithm
        | CertificateError::UnsupportedSignatureAlgorithmContext { .. }
        | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            "certificate is signed with an algorithm that is not supported"
        }
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "certificate is not for this use (its extended key usage)"
        }
        CertificateError::InvalidOcspResponse => "certificate status (OCSP) response is invalid",
        CertificateError::ApplicationVerificationFailure => {
            "certificate was refused by the verifier"
        }
        CertificateError::Other(other) => {
            return match other.0.downcast_ref::<webpki::Error>() {
                Some(error) => webpki_words(error),
                None => format!("certificate refused: {}", other.0),
            };
        }
        other => return format!("certificate refused: {}", words(&format!("{other:?}"))),
    };
    said.to_string()
}

/// webpki's verdicts on a chain, in words.
fn webpki_words(error: &webpki::Error) -> String {
    use webpki::Error as E;
    let said = match error {
        E::CaUsedAsEndEntity => "certificate is a CA certificate, not a server certificate",
        E::EndEntityUsedAsCa => "certificate chain uses a server certificate as a CA",
        E::BadDer | E::BadDerTime | E::TrailingData(_) => "certificate is malformed",
        E::CertDistrusted => "certificate is distrusted",
        E::EmptyEkuExtension => "certificate has an empty extended key usage",
        E::ExtensionValueInvalid | E::MalformedExtensions => {
            "certificate has a malformed extension"
        }
        E::InvalidCertValidity => "certificate has an invalid validity period",
        E::InvalidSerialNumber => "certificate has an invalid serial number",
        E::MaximumPathDepthExceeded | E::PathLenConstraintViolated => {
            "certificate chain is longer than allowed"
        }
        E::NameConstraintViolation => "certificate violates its CA's name constraints",
        E::SignatureAlgorithmMismatch => {
            "certificate signature algorithm does not match its issuer's"
        }
        E::UnsupportedCertVersion => "certificate version is not supported",
        E::UnsupportedCriticalExtension => {
            "certificate has a critical extension that is not supported"
        }
        other => return format!("certificate refused: {}", words(&format!("{other:?}"))),
    };
    said.to_string()
}

/// A Rust name as words: `MaximumPathBuildCallsExceeded(..)` becomes "maximum path
/// build calls exceeded"; what follows the name (its fields) is left out.
fn words(debug: &str) -> String {
    let name = debug
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or(debug);
    split_camel_case(name, ' ')
}

/// `HandshakeFailure` with `_`: `handshake_failure`.
fn split_camel_case(name: &str, separator: char) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push(separator);
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// An alert's name as the TLS specification spells it (`handshake_failure`).
fn alert_name(alert: AlertDescription) -> String {
    split_camel_case(&format!("{alert:?}"), '_')
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
            TlsFailure::BadCertificate(what) => f.write_str(what),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn failure_of(error: CertificateError) -> String {
        TlsFailure::from_rustls(&rustls::Error::InvalidCertificate(error)).to_string()
    }

    #[test]
    fn a_ca_served_as_the_leaf_is_said_in_words() {
        let error = CertificateError::Other(rustls::OtherError(Arc::new(
            webpki::Error::CaUsedAsEndEntity,
        )));
        let failure = TlsFailure::from_rustls(&rustls::Error::InvalidCertificate(error));
        assert!(failure.is_verification());
        assert_eq!(
            failure.to_string(),
            "certificate is a CA certificate, not a server certificate"
        );
    }

    #[test]
    fn no_certificate_problem_prints_as_a_rust_name() {
        let cases = [
            CertificateError::BadEncoding,
            CertificateError::InvalidPurpose,
            CertificateError::UnhandledCriticalExtension,
            CertificateError::Other(rustls::OtherError(Arc::new(
                webpki::Error::MaximumPathBuildCallsExceeded,
            ))),
            CertificateError::Other(rustls::OtherError(Arc::new(webpki::Error::BadDer))),
        ];
        for error in cases {
            let text = failure_of(error);
            assert!(!text.chars().any(|c| c.is_ascii_uppercase()), "{text}");
        }
        assert_eq!(
            failure_of(CertificateError::Other(rustls::OtherError(Arc::new(
                webpki::Error::MaximumPathBuildCallsExceeded
            )))),
            "certificate refused: maximum path build calls exceeded"
        );
    }

    #[test]
    fn peer_protocol_failures_are_words_too() {
        let failure = TlsFailure::from_rustls(&rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::NoCipherSuitesInCommon,
        ));
        assert_eq!(
            failure.to_string(),
            "TLS protocol error: the peer is incompatible: no cipher suites in common"
        );
    }
}
