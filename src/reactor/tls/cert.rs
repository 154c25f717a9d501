//! A readable view of an X.509 certificate (S-06): subject, issuer, names, validity and
//! SHA-256 fingerprint, for commands that report or pin certificates.

use std::fmt;
use std::net::IpAddr;

use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::error::TlsConfigError;

/// A certificate's SHA-256 fingerprint: the hash of its DER encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }

    /// Parses `AB:CD:...` (32 pairs, any case), with or without the colons and with an
    /// optional `SHA256:` prefix, as `openssl x509 -fingerprint -sha256` and
    /// `twistctl` print it.
    pub fn parse(text: &str) -> Result<Fingerprint, TlsConfigError> {
        let bad = || TlsConfigError::BadFingerprint(text.to_string());
        let trimmed = text.trim();
        let body = trimmed
            .strip_prefix("SHA256:")
            .or_else(|| trimmed.strip_prefix("sha256:"))
            .unwrap_or(trimmed);
        let hex: Vec<u8> = body.bytes().filter(|b| *b != b':').collect();
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).map_err(|_| bad())?;
            out[i] = u8::from_str_radix(text, 16).map_err(|_| bad())?;
        }
        Ok(Fingerprint(out))
    }
}

impl fmt::Display for Fingerprint {
    /// Uppercase hex pairs joined by colons, as `openssl x509 -fingerprint -sha256`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{byte:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SHA256:{self}")
    }
}

/// What a certificate says about itself, parsed from its DER encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The subject's distinguished name, e.g. `CN=localhost`.
    pub subject: String,
    /// The issuer's distinguished name.
    pub issuer: String,
    /// DNS names of the subject alternative names.
    pub dns_names: Vec<String>,
    /// IP addresses of the subject alternative names.
    pub ip_addresses: Vec<IpAddr>,
    /// Start of validity.
    pub not_before: jiff::Timestamp,
    /// End of validity.
    pub not_after: jiff::Timestamp,
    /// The serial number, in uppercase hex.
    pub serial: String,
    /// SHA-256 of the DER encoding.
    pub sha256: Fingerprint,
}

/// A certificate could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot parse certificate: {0}")]
pub struct CertificateParseError(String);

impl CertificateInfo {
    /// Parses a DER-encoded certificate.
    pub fn parse(der: &[u8]) -> Result<CertificateInfo, CertificateParseError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| CertificateParseError(e.to_string()))?;
        let mut dns_names = Vec::new();
        let mut ip_addresses = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => dns_names.push(dns.to_string()),
                    GeneralName::IPAddress(bytes) => {
                        if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                            ip_addresses.push(IpAddr::from(v4));
                        } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                            ip_addresses.push(IpAddr::from(v6));
                        }
                    }
                    _ => {}
                }
            }
        }
        let time = |t: x509_parser::time::ASN1Time| {
            jiff::Timestamp::from_second(t.timestamp())
                .map_err(|e| CertificateParseError(format!("validity date out of range: {e}")))
        };
        Ok(CertificateInfo {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            dns_names,
            ip_addresses,
            not_before: time(cert.validity().not_before)?,
            not_after: time(cert.validity().not_after)?,
            serial: cert.raw_serial_as_string().replace(':', "").to_uppercase(),
            sha256: Fingerprint::of(der),
        })
    }

    /// The subject alternative names as text: DNS names, then IP addresses.
    pub fn sans(&self) -> Vec<String> {
        let mut all = self.dns_names.clone();
        all.extend(self.ip_addresses.iter().map(IpAddr::to_string));
        all
    }

    /// Whole days from `now` until the end of validity (negative once expired).
    pub fn days_left(&self, now: jiff::Timestamp) -> i64 {
        (self.not_after.as_second() - now.as_second()).div_euclid(86_400)
    }

    /// True when subject and issuer are the same name.
    pub fn is_self_issued(&self) -> bool {
        self.subject == self.issuer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_print_and_parse_as_openssl_writes_them() {
        let fp = Fingerprint::of(b"some bytes");
        let text = fp.to_string();
        assert_eq!(text.len(), 32 * 3 - 1);
        assert!(text.chars().all(|c| c == ':' || c.is_ascii_hexdigit()));
        assert_eq!(text, text.to_uppercase());
        assert_eq!(Fingerprint::parse(&text).unwrap(), fp);
        assert_eq!(
            Fingerprint::parse(&format!("SHA256:{}", text.to_lowercase())).unwrap(),
            fp
        );
        assert_eq!(Fingerprint::parse(&text.replace(':', "")).unwrap(), fp);
        for bad in [
            "",
            "AB:CD",
            &text[3..],
            &format!("{}ZZ", &text[..text.len() - 2]),
        ] {
            let error = Fingerprint::parse(bad).unwrap_err();
            assert!(error.to_string().contains("fingerprint"), "{error}");
        }
    }
}
