//! How talk-client decides to trust a TLS server: the system's trust store or `--ca`,
//! a pinned fingerprint (`--fingerprint`), none (`--insecure`), or trust on first use
//! with the `known_hosts` file, in ssh's manner.
//!
//! A connection is verified by the TLS layer; what this module adds is the decision
//! after a refusal: a certificate refused only because no known authority issued it
//! may be offered to the person at the terminal (never without one), a remembered
//! server whose certificate changed is refused loudly, and everything else is refused
//! with its reason in words.

use std::io::{self, BufRead, IsTerminal, Write};
use std::path::PathBuf;

use super::known_hosts::{self, ChangedWarning, KnownHosts, Lookup};
use crate::reactor::tls::{
    CertificateInfo, ClientOptions, Fingerprint, TlsClientConfig, TlsError, TlsFailure, Verify,
};

/// How the server's certificate is checked (`--tls` and its options).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsVerify {
    /// The system's trust store; a server it does not vouch for may be trusted on
    /// first use.
    System,
    /// `--ca FILE`: these CA certificates instead; trust on first use as for `System`.
    Ca(PathBuf),
    /// `--fingerprint`: only the leaf's fingerprint counts.
    Pinned(Fingerprint),
    /// `--insecure`: nothing is checked.
    Insecure,
}

/// What to do after the TLS layer refused the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Give up: the words to say why (and lines to print first, for a changed
    /// certificate).
    Refuse {
        /// Printed on stderr before the reason.
        warning: Option<String>,
        /// Why, for `Connection failed - goodbye! (...)`.
        reason: String,
    },
    /// Ask the person at the terminal whether to trust this certificate.
    Ask(Fingerprint),
}

/// The trust decisions for one server (`HOST:PORT`).
#[derive(Debug)]
pub struct Trust {
    verify: TlsVerify,
    /// `HOST:PORT`, as `known_hosts` writes it.
    key: String,
    /// The file, when there is a folder to keep it in.
    known: Option<KnownHosts>,
    /// The fingerprints remembered for this server (then they are pinned).
    remembered: Vec<Fingerprint>,
}

impl Trust {
    /// The decisions for `host`:`port`, reading the known_hosts file of the config dir.
    pub fn new(verify: TlsVerify, host: &str, port: u16) -> Result<Trust, String> {
        let path = crate::commands::dirs::config_dir().map(|dir| dir.join(known_hosts::FILE_NAME));
        let known = match path {
            Some(path) => Some(KnownHosts::load(&path).map_err(|error| {
                format!(
                    "cannot read {}: {}",
                    path.display(),
                    crate::commands::scaffold::os_words(&error)
                )
            })?),
            None => None,
        };
        Ok(Trust::with_known_hosts(verify, host, port, known))
    }

    /// As [`Trust::new`], with the file given (for tests).
    pub fn with_known_hosts(
        verify: TlsVerify,
        host: &str,
        port: u16,
        known: Option<KnownHosts>,
    ) -> Trust {
        let key = known_hosts::host_key(host, port);
        let remembered = match (&verify, &known) {
            (TlsVerify::System | TlsVerify::Ca(_), Some(known)) => known
                .fingerprints(&key)
                .filter_map(|text| Fingerprint::parse(text).ok())
                .collect(),
            _ => Vec::new(),
        };
        Trust {
            verify,
            key,
            known,
            remembered,
        }
    }

    /// The decisions for a server with no host and port to remember it by (a UNIX
    /// socket, named `key`): nothing is remembered, so a certificate no authority
    /// vouches for is refused with how to pin it, never offered.
    pub fn for_socket(verify: TlsVerify, key: String) -> Trust {
        Trust {
            verify,
            key,
            known: None,
            remembered: Vec::new(),
        }
    }

    /// `HOST:PORT`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The client configuration for the next connection: a remembered server is
    /// pinned to what was remembered.
    pub fn config(&self) -> Result<TlsClientConfig, String> {
        let verify = match &self.verify {
            _ if !self.remembered.is_empty() => Verify::Pinned(self.remembered.clone()),
            TlsVerify::System => Verify::System,
            TlsVerify::Ca(path) => Verify::CaFile(path.clone()),
            TlsVerify::Pinned(fingerprint) => Verify::Pinned(vec![*fingerprint]),
            TlsVerify::Insecure => Verify::Off,
        };
        TlsClientConfig::new(&ClientOptions {
            verify,
            ..ClientOptions::default()
        })
        .map_err(|error| format!("TLS: {error}"))
    }

    /// Judges a refusal; `terminal` says whether a person could be asked.
    pub fn judge(&self, error: &TlsError, terminal: bool) -> Verdict {
        let refuse = |reason: String| Verdict::Refuse {
            warning: None,
            reason,
        };
        let Some(leaf) = error.presented.first() else {
            return refuse(format!("TLS: {error}"));
        };
        let presented = Fingerprint::of(leaf);
        match &error.failure {
            TlsFailure::NotPinned => match &self.verify {
                TlsVerify::Pinned(pin) => refuse(format!(
                    "TLS: the server's certificate SHA256:{presented} does not match \
                     --fingerprint SHA256:{pin}"
                )),
                _ => self.changed(presented),
            },
            TlsFailure::UnknownIssuer if self.remembered.is_empty() => {
                // Never offer a certificate that is out of its validity period.
                if let Some(reason) = out_of_date(leaf) {
                    return refuse(format!("TLS: {reason}"));
                }
                // Without a known_hosts file the answer could not be kept: pin instead.
                if terminal && self.known.is_some() {
                    Verdict::Ask(presented)
                } else {
                    refuse(format!(
                        "TLS: {error}; the certificate of {} is SHA256:{presented}: if the \
                         server's operator confirms it, connect with --fingerprint \
                         SHA256:{presented}",
                        self.key
                    ))
                }
            }
            _ => refuse(format!("TLS: {error}")),
        }
    }

    fn changed(&self, presented: Fingerprint) -> Verdict {
        let presented = format!("SHA256:{presented}");
        let Some(known) = &self.known else {
            return Verdict::Refuse {
                warning: None,
                reason: "TLS: the server's certificate has changed".to_string(),
            };
        };
        match known.lookup(&self.key, &presented) {
            Lookup::Changed(entry) => Verdict::Refuse {
                warning: Some(
                    ChangedWarning {
                        key: &self.key,
                        remembered: &entry,
                        presented: &presented,
                        path: known.path(),
                    }
                    .to_string(),
                ),
                reason: format!("TLS: the certificate of {} has changed", self.key),
            },
            _ => Verdict::Refuse {
                warning: None,
                reason: "TLS: the server's certificate has changed".to_string(),
            },
        }
    }

    /// The person said yes: remember the certificate and pin it from now on.
    pub fn remember(&mut self, fingerprint: Fingerprint) -> Result<String, String> {
        let Some(known) = &mut self.known else {
            return Err("no known_hosts file to remember it in".to_string());
        };
        known
            .remember(&self.key, &format!("SHA256:{fingerprint}"))
            .map_err(|error| {
                format!(
                    "cannot write {}: {}",
                    known.path().display(),
                    crate::commands::scaffold::os_words(&error)
                )
            })?;
        self.remembered = vec![fingerprint];
        Ok(format!(
            "* {} SHA256:{fingerprint} remembered in {}",
            self.key,
            known.path().display()
        ))
    }
}

/// Why a certificate is out of its validity period, if it is.
fn out_of_date(leaf: &[u8]) -> Option<String> {
    let info = CertificateInfo::parse(leaf).ok()?;
    let now = jiff::Timestamp::now();
    if now > info.not_after {
        Some(
            TlsFailure::Expired {
                not_after: Some(info.not_after.as_second()),
            }
            .to_string(),
        )
    } else if now < info.not_before {
        Some(
            TlsFailure::NotYetValid {
                not_before: Some(info.not_before.as_second()),
            }
            .to_string(),
        )
    } else {
        None
    }
}

/// Whether a person could answer a question: stdin and stderr are terminals.
pub fn at_terminal() -> bool {
    io::stdin().is_terminal() && io::stderr().is_terminal()
}

/// Asks on the terminal whether to trust `fingerprint` for `key` (blocking: run it on
/// a thread). Only `y` or `yes` is yes.
pub fn ask(key: &str, fingerprint: Fingerprint) -> bool {
    {
        let mut err = io::stderr().lock();
        let _ = writeln!(
            err,
            "* The certificate of {key} is not issued by an authority this machine trusts."
        );
        let _ = writeln!(err, "* Its fingerprint is SHA256:{fingerprint}");
        let _ = writeln!(
            err,
            "* Compare it with the one the server's operator sees (talk-server prints it at start)."
        );
        let _ = write!(err, "Trust this certificate for {key}? [y/N] ");
        let _ = err.flush();
    }
    let mut answer = String::new();
    match io::stdin().lock().read_line(&mut answer) {
        Ok(_) => matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::tls::ServerIdentity;
    use std::path::Path;
    use std::rc::Rc;

    fn presented(failure: TlsFailure) -> (TlsError, Fingerprint) {
        let (identity, _) = ServerIdentity::generate(&["localhost".to_string()]).unwrap();
        let fingerprint = identity.fingerprint();
        let error = TlsError {
            failure,
            presented: Rc::from(identity.chain),
        };
        (error, fingerprint)
    }

    fn known(text: &str) -> Option<KnownHosts> {
        Some(KnownHosts::parse(
            Path::new("/home/u/.config/twistctl/known_hosts"),
            text,
        ))
    }

    #[test]
    fn an_unknown_issuer_is_offered_at_a_terminal_only() {
        let trust = Trust::with_known_hosts(TlsVerify::System, "localhost", 8443, known(""));
        let (error, fingerprint) = presented(TlsFailure::UnknownIssuer);
        assert_eq!(trust.judge(&error, true), Verdict::Ask(fingerprint));
        match trust.judge(&error, false) {
            Verdict::Refuse { reason, .. } => {
                assert!(reason.contains("--fingerprint SHA256:"), "{reason}");
                assert!(reason.contains(&fingerprint.to_string()), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn without_a_known_hosts_file_nothing_is_offered_but_pinning_is_explained() {
        let trust = Trust::with_known_hosts(TlsVerify::System, "localhost", 8443, None);
        let (error, fingerprint) = presented(TlsFailure::UnknownIssuer);
        match trust.judge(&error, true) {
            Verdict::Refuse { reason, .. } => {
                assert!(reason.contains(&format!("--fingerprint SHA256:{fingerprint}")))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn expired_and_mismatched_certificates_are_never_offered() {
        let trust = Trust::with_known_hosts(TlsVerify::System, "localhost", 8443, known(""));
        for failure in [
            TlsFailure::Expired { not_after: None },
            TlsFailure::NameMismatch {
                expected: "x".to_string(),
                presented: vec![],
            },
        ] {
            let (error, _) = presented(failure);
            assert!(matches!(trust.judge(&error, true), Verdict::Refuse { .. }));
        }
    }

    #[test]
    fn a_remembered_server_is_pinned_and_a_change_is_refused_loudly() {
        let old = "SHA256:".to_string() + &["AB"; 32].join(":");
        let trust = Trust::with_known_hosts(
            TlsVerify::System,
            "localhost",
            8443,
            known(&format!("# mine\nlocalhost:8443 {old}\n")),
        );
        assert_eq!(trust.remembered.len(), 1);
        let (error, fingerprint) = presented(TlsFailure::NotPinned);
        match trust.judge(&error, true) {
            Verdict::Refuse {
                warning: Some(warning),
                reason,
            } => {
                assert!(warning.contains(&old), "{warning}");
                assert!(warning.contains(&fingerprint.to_string()), "{warning}");
                assert!(warning.contains("line 2"), "{warning}");
                assert!(reason.contains("changed"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
}
