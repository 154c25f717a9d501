//! What conntest checks on a connection once it is made: a TLS handshake and the
//! server's certificate (`--tls`, `--starttls`), a reply (`--send`/`--expect`), or
//! nothing (the port is open). The check is a protocol handed to the hostname
//! endpoint as a [`CheckedFactory`]: the endpoint counts the target as connected only
//! when the probe passes, so the race, the concurrency gate, `--wait`, `--any`,
//! `--json` and `-- CMD` work the same with every check.
//!
//! A probe reports what it found (TLS details, the banner) through a shared
//! [`Findings`] slot, and a failed check as a [`ProbeFailure`] naming its status.

use std::cell::RefCell;
use std::fmt;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use super::expect::{Expectation, MismatchCause, Pattern, Verdict};
use super::outcome::Status;
use super::starttls::{Action, Dialect, Exchange};
use crate::commands::escape::escape_peer_text;
use crate::commands::target::Target;
use crate::reactor::endpoints::{CheckHandle, CheckedFactory};
use crate::reactor::tls::{
    CertificateInfo, ClientOptions, Protocols, StartTls, TlsClientConfig, TlsConfigError, TlsError,
    TlsFailure, Verify, client_protocol,
};
use crate::reactor::{
    Address, CloseReason, DelayedCall, Protocol, ProtocolResult, Reactor, TransportRef,
};

/// The longest banner reported, in characters of its escaped form.
pub const BANNER_LIMIT: usize = 200;

/// `--tls` and its options, as the command line gave them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// `--sni NAME`: the name sent and verified instead of the host as typed.
    pub sni: Option<String>,
    /// `--ca FILE`: trust these CA certificates instead of the system's.
    pub ca: Option<PathBuf>,
    /// `--insecure`: verify nothing (details are still reported).
    pub insecure: bool,
    /// `--alpn`: the protocols offered, in order.
    pub alpn: Vec<String>,
    /// `--cert-days N`: fail when the leaf expires in fewer than N days.
    pub cert_days: Option<i64>,
}

/// What is checked on each connection, as plain configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeConfig {
    /// `--tls` (or `--starttls`): a TLS handshake, with these options.
    pub tls: Option<TlsOptions>,
    /// `--starttls PROTO`: the plain-text upgrade before the handshake.
    pub starttls: Option<Dialect>,
    /// `--send`: bytes written once connected (after the handshake with TLS).
    pub send: Option<Vec<u8>>,
    /// `--expect`: the pattern the reply must match.
    pub expect: Option<Pattern>,
    /// `--max-bytes`: how much of the reply is read at most.
    pub max_bytes: usize,
    /// `--quit`: bytes written before closing.
    pub quit: Option<Vec<u8>>,
}

impl ProbeConfig {
    /// True when connecting is all there is to check.
    pub fn is_plain(&self) -> bool {
        self.tls.is_none() && self.send.is_none() && self.expect.is_none()
    }
}

/// The certificate details reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFindings {
    /// The subject's distinguished name.
    pub subject: String,
    /// The issuer's distinguished name.
    pub issuer: String,
    /// Subject alternative names: DNS names, then IP addresses.
    pub sans: Vec<String>,
    /// Start of validity.
    pub not_before: jiff::Timestamp,
    /// End of validity.
    pub not_after: jiff::Timestamp,
    /// Whole days left (negative once expired).
    pub days_left: i64,
    /// SHA-256 of the DER form, as `openssl x509 -fingerprint -sha256` prints it.
    pub sha256: String,
}

impl CertFindings {
    fn of(info: &CertificateInfo, now: jiff::Timestamp) -> CertFindings {
        CertFindings {
            subject: info.subject.clone(),
            issuer: info.issuer.clone(),
            sans: info.sans(),
            not_before: info.not_before,
            not_after: info.not_after,
            days_left: info.days_left(now),
            sha256: info.sha256.to_string(),
        }
    }

    /// The name the certificate is for: its first SAN, else its subject.
    pub fn name(&self) -> &str {
        self.sans.first().unwrap_or(&self.subject)
    }

    /// `2027-02-01`.
    pub fn expiry_date(&self) -> String {
        self.not_after.strftime("%Y-%m-%d").to_string()
    }
}

/// What the handshake settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFindings {
    /// `TLSv1.3`.
    pub version: String,
    /// The cipher suite's IANA name.
    pub cipher: String,
    /// The ALPN protocol chosen, if any.
    pub alpn: Option<String>,
}

/// Everything a probe found, passed or not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    /// The TLS session, once the handshake completed.
    pub tls: Option<TlsFindings>,
    /// The server's leaf certificate (also when verification refused it).
    pub cert: Option<CertFindings>,
    /// What came back for `--expect`, escaped and cut to [`BANNER_LIMIT`].
    pub banner: Option<String>,
    /// How long the TLS handshake took, from the connection to its completion.
    pub tls_time: Option<Duration>,
}

/// A failed check: which status it stands for and why, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeFailure {
    /// The status (tls-error, cert-invalid, mismatch, ...).
    pub status: Status,
    /// What went wrong.
    pub reason: String,
}

impl fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for ProbeFailure {}

/// The configuration built once per run: the TLS client configuration (the CA file
/// read now).
pub struct Prepared {
    config: ProbeConfig,
    tls: Option<TlsClientConfig>,
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The probe could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The TLS configuration (the CA file above all) was refused.
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
}

impl Prepared {
    /// Reads the CA file (or the system's trust store).
    pub fn new(config: ProbeConfig) -> Result<Prepared, PrepareError> {
        let tls = match &config.tls {
            None => None,
            Some(options) => {
                let verify = if options.insecure {
                    Verify::Off
                } else if let Some(ca) = &options.ca {
                    Verify::CaFile(ca.clone())
                } else {
                    Verify::System
                };
                let protocols = Protocols {
                    alpn: options.alpn.iter().map(|p| p.as_bytes().to_vec()).collect(),
                    ..Protocols::default()
                };
                Some(TlsClientConfig::new(&ClientOptions {
                    verify,
                    protocols,
                    resumption: false,
                })?)
            }
        };
        Ok(Prepared { config, tls })
    }

    /// True when connecting is all there is to check.
    pub fn is_plain(&self) -> bool {
        self.config.is_plain()
    }

    /// The factory for one check of `target` (verified and sent as SNI by
    /// [`Target::tls_server_name`]); the probe reports into `findings`.
    pub fn factory(
        self: &Rc<Self>,
        reactor: &Reactor,
        target: &Target,
        timeout: Duration,
        findings: Rc<RefCell<Findings>>,
    ) -> Rc<dyn CheckedFactory> {
        let sni = self.config.tls.as_ref().and_then(|tls| tls.sni.as_deref());
        let server_name = target.tls_server_name(sni);
        Rc::new(ProbeFactory {
            prepared: self.clone(),
            reactor: reactor.clone(),
            server_name,
            timeout,
            findings,
        })
    }
}

struct ProbeFactory {
    prepared: Rc<Prepared>,
    reactor: Reactor,
    server_name: String,
    timeout: Duration,
    findings: Rc<RefCell<Findings>>,
}

impl CheckedFactory for ProbeFactory {
    fn build_protocol(&self, _addr: Address, check: CheckHandle) -> Option<Box<dyn Protocol>> {
        self.build(check)
    }
}

impl ProbeFactory {
    /// The probe, under a TLS layer for `--tls` (not for `--starttls`, which starts
    /// TLS itself once the server agreed).
    fn build(&self, check: CheckHandle) -> Option<Box<dyn Protocol>> {
        let prepared = &self.prepared;
        let state = State {
            prepared: prepared.clone(),
            reactor: self.reactor.clone(),
            server_name: self.server_name.clone(),
            timeout: self.timeout,
            findings: self.findings.clone(),
            check,
            transport: None,
            expectation: None,
            exchange: None,
            timer: None,
            connected_at: None,
            done: false,
            verdict: None,
        };
        let probe = Box::new(Probe {
            state: Rc::new(RefCell::new(state)),
        });
        match (&prepared.tls, prepared.config.starttls) {
            (Some(config), None) => {
                match client_protocol(&self.reactor, config, &self.server_name, probe) {
                    Ok(protocol) => Some(protocol),
                    Err(error) => {
                        log::error!("TLS to {} not started: {error}", self.server_name);
                        None
                    }
                }
            }
            _ => Some(probe),
        }
    }
}

type Matcher = Box<dyn Fn(&str) -> bool>;

/// One probe's state, shared with its timer.
struct State {
    prepared: Rc<Prepared>,
    reactor: Reactor,
    server_name: String,
    timeout: Duration,
    findings: Rc<RefCell<Findings>>,
    check: CheckHandle,
    transport: Option<TransportRef>,
    expectation: Option<Expectation<Matcher>>,
    exchange: Option<Exchange>,
    timer: Option<DelayedCall>,
    connected_at: Option<Duration>,
    done: bool,
    /// The verdict, delivered once the connection is closed.
    verdict: Option<End>,
}

/// How a probe ends.
enum End {
    Pass,
    Fail(ProbeFailure),
}

struct Probe {
    state: Rc<RefCell<State>>,
}

impl Probe {
    /// Ends the probe: the connection is closed in an orderly way (`--quit` first,
    /// close_notify with TLS), and the verdict goes to the endpoint once it is closed,
    /// so that nothing written is lost when the run ends with the verdict.
    fn end(state: &Rc<RefCell<State>>, end: End) {
        let transport = {
            let mut s = state.borrow_mut();
            if s.done {
                return;
            }
            s.done = true;
            if let Some(timer) = s.timer.take() {
                let _ = timer.cancel();
            }
            let transport = s.transport.clone();
            if let (Some(transport), Some(quit)) = (&transport, &s.prepared.config.quit) {
                transport.write(quit);
            }
            if transport.is_some() {
                s.verdict = Some(end);
            } else {
                drop(s);
                return Probe::deliver(state, end);
            }
            transport
        };
        if let Some(transport) = transport {
            transport.lose_connection();
        }
    }

    fn deliver(state: &Rc<RefCell<State>>, end: End) {
        let check = state.borrow().check.clone();
        match end {
            End::Pass => check.pass(),
            End::Fail(failure) => check.fail(crate::reactor::Failure::new(failure)),
        }
    }

    /// Connected (and through the handshake, with TLS): send, then expect or pass.
    fn connected(state: &Rc<RefCell<State>>, transport: &TransportRef) {
        let mut s = state.borrow_mut();
        if let Some(send) = &s.prepared.config.send {
            transport.write(send);
        }
        let Some(pattern) = s.prepared.config.expect.clone() else {
            drop(s);
            return Probe::end(state, End::Pass);
        };
        let max = s.prepared.config.max_bytes;
        s.expectation = Some(Expectation::new(
            Box::new(move |text: &str| pattern.is_match(text)) as Matcher,
            max,
        ));
        Probe::arm_timer(state, &mut s);
    }

    fn arm_timer(state: &Rc<RefCell<State>>, s: &mut State) {
        if s.timer.is_some() {
            return;
        }
        let weak = Rc::downgrade(state);
        s.timer = Some(s.reactor.call_later(s.timeout, move || {
            if let Some(state) = weak.upgrade() {
                state.borrow_mut().timer = None;
                Probe::timed_out(&state);
            }
        }));
    }

    fn timed_out(state: &Rc<RefCell<State>>) {
        let end = {
            let mut s = state.borrow_mut();
            if s.done {
                return;
            }
            let timeout = crate::duration::format(s.timeout);
            if let Some(expectation) = s.expectation.as_mut() {
                let verdict = expectation.timed_out();
                s.judge(verdict)
            } else {
                let what = if s.exchange.is_some() {
                    "the STARTTLS exchange"
                } else {
                    "the TLS handshake"
                };
                End::Fail(ProbeFailure {
                    status: Status::Timeout,
                    reason: format!("{what} did not finish within {timeout}"),
                })
            }
        };
        Probe::end(state, end);
    }
}

impl State {
    /// The end a verdict of `--expect` stands for; the banner is recorded.
    fn judge(&mut self, verdict: Verdict) -> End {
        match verdict {
            Verdict::Match { got } => {
                self.findings.borrow_mut().banner = Some(banner(&got));
                End::Pass
            }
            Verdict::Mismatch { got, why } => {
                let shown = banner(&got);
                self.findings.borrow_mut().banner = Some(shown.clone());
                let after = match why {
                    MismatchCause::Closed => " before the connection closed",
                    MismatchCause::TooMuch => " in the first --max-bytes",
                    MismatchCause::TimedOut => "",
                };
                let pattern = self.prepared.config.expect.as_ref();
                let pattern = pattern.map(Pattern::to_string).unwrap_or_default();
                End::Fail(ProbeFailure {
                    status: Status::Mismatch,
                    reason: format!("expected /{pattern}/{after}, got \"{shown}\""),
                })
            }
            Verdict::Timeout => End::Fail(ProbeFailure {
                status: Status::Timeout,
                reason: format!("no reply within {}", crate::duration::format(self.timeout)),
            }),
        }
    }

    /// The handshake completed: record the session and the certificate, apply
    /// `--cert-days`.
    fn handshake_done(&mut self, transport: &TransportRef) -> Option<ProbeFailure> {
        let session = transport.tls()?;
        let now = jiff::Timestamp::now();
        let mut findings = self.findings.borrow_mut();
        findings.tls = Some(TlsFindings {
            version: session.version.clone(),
            cipher: session.cipher.clone(),
            alpn: session
                .alpn
                .as_ref()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
        });
        findings.tls_time = self
            .connected_at
            .map(|at| self.reactor.seconds().saturating_sub(at));
        findings.cert = session
            .peer_certificate()
            .and_then(Result::ok)
            .map(|info| CertFindings::of(&info, now));
        let min = self.prepared.config.tls.as_ref()?.cert_days?;
        let cert = findings.cert.as_ref()?;
        (cert.days_left < min).then(|| ProbeFailure {
            status: Status::CertExpiring,
            reason: format!(
                "certificate expires in {} days ({}), fewer than --cert-days {min}",
                cert.days_left,
                cert.expiry_date()
            ),
        })
    }

    /// The handshake failed: record the certificate presented, say why.
    fn handshake_failed(&mut self, error: &TlsError) -> ProbeFailure {
        let now = jiff::Timestamp::now();
        let cert = error
            .presented
            .first()
            .and_then(|der| CertificateInfo::parse(der).ok())
            .map(|info| CertFindings::of(&info, now));
        let reason = match (&error.failure, &cert) {
            (TlsFailure::Expired { .. }, Some(cert)) => format!(
                "certificate has expired ({}, {} days ago)",
                cert.expiry_date(),
                -cert.days_left - 1
            ),
            (TlsFailure::NotYetValid { .. }, Some(cert)) => format!(
                "certificate is not yet valid (from {})",
                cert.not_before.strftime("%Y-%m-%d")
            ),
            (failure, _) => failure.to_string(),
        };
        self.findings.borrow_mut().cert = cert;
        let status = if error.failure.is_verification() {
            Status::CertInvalid
        } else {
            Status::TlsError
        };
        ProbeFailure { status, reason }
    }
}

/// Peer text as shown: escaped, cut to [`BANNER_LIMIT`] characters.
pub fn banner(text: &str) -> String {
    let escaped = escape_peer_text(text.as_bytes());
    match escaped.char_indices().nth(BANNER_LIMIT) {
        Some((at, _)) => format!("{}...", &escaped[..at]),
        None => escaped,
    }
}

impl Protocol for Probe {
    fn connection_made(&mut self, transport: &TransportRef) -> ProtocolResult {
        let plain_start = {
            let mut s = self.state.borrow_mut();
            s.transport = Some(transport.clone());
            s.connected_at = Some(s.reactor.seconds());
            match s.prepared.config.starttls {
                Some(dialect) => {
                    let (exchange, first) = Exchange::start(dialect);
                    s.exchange = Some(exchange);
                    if let Some(Action::Send(bytes)) = first {
                        transport.write(&bytes);
                    }
                    Probe::arm_timer(&self.state, &mut s);
                    false
                }
                None if s.prepared.tls.is_some() => {
                    // The handshake is bounded by --timeout too.
                    Probe::arm_timer(&self.state, &mut s);
                    false
                }
                None => true,
            }
        };
        if plain_start {
            Probe::connected(&self.state, transport);
        }
        Ok(())
    }

    fn handshake_completed(&mut self, transport: &TransportRef) -> ProtocolResult {
        let failure = {
            let mut s = self.state.borrow_mut();
            s.exchange = None;
            if let Some(timer) = s.timer.take() {
                let _ = timer.cancel();
            }
            s.handshake_done(transport)
        };
        match failure {
            Some(failure) => Probe::end(&self.state, End::Fail(failure)),
            None => Probe::connected(&self.state, transport),
        }
        Ok(())
    }

    fn data_received(&mut self, transport: &TransportRef, data: &[u8]) -> ProtocolResult {
        let mut s = self.state.borrow_mut();
        if s.done {
            return Ok(());
        }
        if let Some(exchange) = s.exchange.as_mut() {
            let actions = exchange.received(data);
            for action in actions {
                match action {
                    Action::Send(bytes) => transport.write(&bytes),
                    Action::StartTls => {
                        let Some(config) = s.prepared.tls.clone() else {
                            continue;
                        };
                        let tls = StartTls::Client {
                            config,
                            server_name: s.server_name.clone(),
                        };
                        if let Err(error) = transport.start_tls(tls) {
                            drop(s);
                            Probe::end(
                                &self.state,
                                End::Fail(ProbeFailure {
                                    status: Status::TlsError,
                                    reason: format!("cannot start TLS: {error}"),
                                }),
                            );
                            return Ok(());
                        }
                    }
                    Action::Refused(said) => {
                        let dialect = exchange_name(&s);
                        drop(s);
                        Probe::end(
                            &self.state,
                            End::Fail(ProbeFailure {
                                status: Status::StarttlsRefused,
                                reason: format!(
                                    "{dialect} STARTTLS refused: \"{}\"",
                                    banner(said.trim_end())
                                ),
                            }),
                        );
                        return Ok(());
                    }
                }
            }
            return Ok(());
        }
        let verdict = match s.expectation.as_mut() {
            Some(expectation) => expectation.received(data),
            None => None,
        };
        if let Some(verdict) = verdict {
            let end = s.judge(verdict);
            drop(s);
            Probe::end(&self.state, end);
        }
        Ok(())
    }

    fn connection_lost(&mut self, reason: &CloseReason) {
        let end = {
            let mut s = self.state.borrow_mut();
            if let Some(verdict) = s.verdict.take() {
                drop(s);
                return Probe::deliver(&self.state, verdict);
            }
            if s.done {
                return;
            }
            if let CloseReason::Tls(error) = reason {
                End::Fail(s.handshake_failed(error))
            } else if let Some(exchange) = s.exchange.as_mut() {
                let action = exchange.closed();
                let dialect = exchange_name(&s);
                let said = match action {
                    Action::Refused(said) => said,
                    _ => "the server closed the connection".to_string(),
                };
                End::Fail(ProbeFailure {
                    status: Status::StarttlsRefused,
                    reason: format!(
                        "{dialect} STARTTLS refused: \"{}\"",
                        banner(said.trim_end())
                    ),
                })
            } else if let Some(expectation) = s.expectation.as_mut() {
                let verdict = expectation.closed();
                s.judge(verdict)
            } else if s.prepared.tls.is_some() {
                End::Fail(ProbeFailure {
                    status: Status::TlsError,
                    reason: format!(
                        "the server closed the connection during the TLS handshake ({reason})"
                    ),
                })
            } else {
                return;
            }
        };
        // The connection is gone already: the verdict goes out now.
        {
            let mut s = self.state.borrow_mut();
            s.done = true;
            if let Some(timer) = s.timer.take() {
                let _ = timer.cancel();
            }
        }
        Probe::deliver(&self.state, end);
    }
}

fn exchange_name(s: &State) -> &'static str {
    s.exchange
        .as_ref()
        .map(|e| e.dialect().name())
        .or(s.prepared.config.starttls.map(Dialect::name))
        .unwrap_or("")
}
