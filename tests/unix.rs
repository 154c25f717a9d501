//! UNIX domain sockets against spec items U-01..U-06, on sockets in a temporary
//! directory (and Linux abstract names).
//!
//! U-01 says every P and X item that does not name TCP holds over UNIX sockets; the
//! connection code is the one TCP uses, so a representative set runs here: lifecycle
//! order, buffered writes, lose and abort, half-close, pausing, the producer's high-water
//! mark, and the accept back-off when descriptors run out. Every run is bounded by a
//! watchdog that stops the reactor and fails the test after 5 s.

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener as StdListener, UnixStream as StdStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use twistctl::reactor::endpoints::description::Listening;
use twistctl::reactor::endpoints::{
    CheckHandle, CheckedFactory, Connection, parse_client, parse_server,
};
use twistctl::reactor::stream::{Connector, HIGH_WATER_MARK};
use twistctl::reactor::unix::{
    UnixCheckError, UnixConnectError, UnixEndpoint, UnixListenOptions, UnixPort,
};
use twistctl::reactor::{
    Address, ConnectError, PeerCredentials, Producer, Reactor, Step, TransportRef, UnixAddress,
};

mod common;

use common::lifecycle::*;

// ---------------------------------------------------------------------------------------
// Fixtures (the recording protocol and factory are shared with the TCP tests)

/// Only the events that start with `prefix`, in order.
fn side(log: &Log, prefix: &str) -> Vec<String> {
    events(log)
        .into_iter()
        .filter(|e| e.starts_with(prefix))
        .collect()
}

/// A directory of its own for each test, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "twistctl-unix-{}-{name}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn socket(&self, name: &str) -> UnixAddress {
        UnixAddress::Path(self.path(name))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An abstract name no other run uses.
fn abstract_name(name: &str) -> UnixAddress {
    UnixAddress::from_arg(&format!("@twistctl-test-{}-{name}", std::process::id()))
}

fn listen(reactor: &Reactor, address: &UnixAddress, factory: Fac) -> UnixPort {
    reactor
        .listen_unix(address.clone(), factory.rc())
        .expect("listening")
}

fn connect(reactor: &Reactor, address: &UnixAddress, factory: Fac) -> Connector {
    reactor.connect_unix(address.clone(), factory.rc(), Some(WATCHDOG))
}

// ---------------------------------------------------------------------------------------
// U-01: the P and X items over UNIX sockets

#[test]
fn u01_p07_p12_p14_lifecycle_order_on_both_sides() {
    let dir = TempDir::new("lifecycle");
    let address = dir.socket("s");
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let server = server(&log, |p| {
        p.data(|t, data| {
            t.write(data);
            t.lose_connection();
            Ok(())
        })
    });
    let port = listen(&reactor, &address, server);
    let client = client(&log, |p| {
        p.made(|t| {
            t.write(b"ping");
            Ok(())
        })
    })
    .lost(stop_on_client_lost(&reactor));
    connect(&reactor, &address, client);
    run(&reactor);
    drop(port);
    assert_eq!(
        side(&log, "srv"),
        [
            "srvf:start",
            "srvf:build",
            "srv:made",
            "srv:data",
            "srv:lost(Done)",
            // The reactor's shutdown closes the port (P-28).
            "srvf:stop",
        ]
    );
    assert_eq!(
        side(&log, "c"),
        [
            "cf:start",
            "cf:started(connecting=true)",
            "cf:build",
            "cli:made",
            "cli:data",
            "cli:lost(Done)",
            "cf:client_lost(Done)",
            "cf:stop",
        ]
    );
}

#[test]
fn u01_x01_x05_buffered_writes_arrive_whole_and_in_order_before_the_close() {
    const LEN: usize = 4 * 1024 * 1024;
    let dir = TempDir::new("buffered");
    let address = dir.socket("s");
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let received = Rc::new(RefCell::new(Vec::new()));
    // Both ends must have seen the close: the server's protocol and the client's factory.
    let both = countdown(&reactor, 2);
    let (r, b) = (received.clone(), both.clone());
    let server = server(&log, move |p| {
        let (r, b) = (r.clone(), b.clone());
        p.data(move |_, data| {
            r.borrow_mut().extend_from_slice(data);
            Ok(())
        })
        .lost(move |_| b())
    });
    let _port = listen(&reactor, &address, server);
    let client = client(&log, |p| {
        p.made(|t| {
            let data = pattern(0, LEN);
            // Several writes, then the close: all of it is sent first (X-05).
            for chunk in data.chunks(300_000) {
                t.write(chunk);
            }
            t.lose_connection();
            assert!(t.is_disconnecting(), "X-07");
            t.write(b""); // X-01: nothing
            Ok(())
        })
    })
    .lost(move |_, _| both());
    connect(&reactor, &address, client);
    run(&reactor);
    assert_eq!(received.borrow().len(), LEN);
    assert!(*received.borrow() == pattern(0, LEN), "bytes in order");
    assert!(events(&log).contains(&"cli:lost(Done)".to_string()));
    assert!(events(&log).contains(&"srv:lost(Done)".to_string()));
}

#[test]
fn u01_x08_abort_drops_what_was_buffered() {
    let dir = TempDir::new("abort");
    let address = dir.socket("s");
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let server = server(&log, |p| {
        p.made(|t| {
            t.write(&pattern(0, 1024 * 1024));
            t.abort_connection();
            t.abort_connection(); // X-09: harmless
            t.write(b"never sent");
            Ok(())
        })
    });
    let _port = listen(&reactor, &address, server);
    let client = client(&log, |p| p).lost(stop_on_client_lost(&reactor));
    connect(&reactor, &address, client);
    run(&reactor);
    let events = events(&log);
    assert!(
        events.contains(&"srv:lost(Aborted)".to_string()),
        "{events:?}"
    );
    assert!(
        !events.contains(&"cli:data".to_string()),
        "nothing buffered was sent: {events:?}"
    );
}

#[test]
fn u01_x11_x12_half_close_both_ways() {
    let dir = TempDir::new("half");
    let address = dir.socket("s");
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    // The server answers the client's EOF, then closes its side too.
    let server = server(&log, |p| {
        p.half_close(|t| {
            t.write(b"bye");
            t.lose_write_connection();
            Ok(())
        })
    });
    let _port = listen(&reactor, &address, server);
    let reply = Rc::new(RefCell::new(Vec::new()));
    let r = reply.clone();
    let client = client(&log, move |p| {
        let r = r.clone();
        p.made(|t| {
            t.write(b"hello");
            t.lose_write_connection();
            t.write(b"discarded"); // X-03
            Ok(())
        })
        .data(move |_, data| {
            r.borrow_mut().extend_from_slice(data);
            Ok(())
        })
        .half_close(|_| Ok(()))
    })
    .lost(stop_on_client_lost(&reactor));
    connect(&reactor, &address, client);
    run(&reactor);
    assert_eq!(&*reply.borrow(), b"bye");
    let client_side = side(&log, "cli:");
    assert_eq!(
        client_side,
        [
            "cli:made",
            "cli:write_lost",
            "cli:data",
            "cli:read_lost",
            "cli:lost(Done)"
        ]
    );
    let server_side = side(&log, "srv:");
    assert_eq!(
        server_side,
        [
            "srv:made",
            "srv:data",
            "srv:read_lost",
            "srv:write_lost",
            "srv:lost(Done)"
        ]
    );
}

/// An out-of-band byte (Linux 5.15 on) stops a read short with bytes behind it, as an
/// urgent mark does over TCP: the bytes after it still arrive before the EOF.
#[test]
fn u01_x12_bytes_after_an_out_of_band_byte_arrive_before_the_eof() {
    let dir = TempDir::new("oob");
    let address = dir.socket("s");
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let received = Rc::new(RefCell::new(Vec::new()));
    let (r, into) = (reactor.clone(), received.clone());
    let server = server(&log, move |p| p.into_received(&into).lost(stop_on_lost(&r)));
    let _port = listen(&reactor, &address, server);
    let mut peer = StdStream::connect(dir.path("s")).unwrap();
    peer.write_all(b"before").unwrap();
    if let Err(error) = socket2::SockRef::from(&peer).send_out_of_band(b"!") {
        eprintln!("skipped: this kernel has no out-of-band data on UNIX sockets: {error}");
        return;
    }
    peer.write_all(b"after").unwrap();
    peer.shutdown(std::net::Shutdown::Write).unwrap();
    run(&reactor);
    assert_eq!(String::from_utf8_lossy(&received.borrow()), "beforeafter");
    assert!(
        events(&log).contains(&"srv:lost(Done)".to_string()),
        "{:?}",
        events(&log)
    );
}

#[test]
fn u01_x18_pause_producing_holds_data_until_resume() {
    let dir = TempDir::new("pause");
    let address = dir.socket("s");
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let held: Rc<RefCell<Option<TransportRef>>> = Rc::new(RefCell::new(None));
    let h = held.clone();
    let server = server(&log, move |p| {
        let h = h.clone();
        p.made(move |t| {
            t.pause_producing(); // honoured inside connection_made (X-18)
            *h.borrow_mut() = Some(t.clone());
            Ok(())
        })
        .data(|t, _| {
            t.lose_connection();
            Ok(())
        })
    });
    let _port = listen(&reactor, &address, server);
    let (l, h, r) = (log.clone(), held.clone(), reactor.clone());
    let client = client(&log, move |p| {
        let (l, h, r) = (l.clone(), h.clone(), r.clone());
        p.made(move |t| {
            t.write(b"while paused");
            // The bytes reach the paused server's socket; nothing is delivered until
            // it resumes.
            let (l, h) = (l.clone(), h.clone());
            r.call_later(Duration::from_millis(50), move || {
                push(&l, "resume");
                if let Some(t) = h.borrow_mut().take() {
                    t.resume_producing();
                }
            });
            Ok(())
        })
    })
    .lost(stop_on_client_lost(&reactor));
    connect(&reactor, &address, client);
    run(&reactor);
    let events = events(&log);
    let resume = events.iter().position(|e| e == "resume").expect("resumed");
    let data = events.iter().position(|e| e == "srv:data").expect("data");
    assert!(resume < data, "no data while paused: {events:?}");
}

/// Counts what it is told.
#[derive(Default)]
struct CountingProducer {
    paused: Cell<usize>,
    resumed: Cell<usize>,
    stopped: Cell<usize>,
}

impl Producer for CountingProducer {
    fn pause_producing(&self) {
        self.paused.set(self.paused.get() + 1);
    }
    fn resume_producing(&self) {
        self.resumed.set(self.resumed.get() + 1);
    }
    fn stop_producing(&self) {
        self.stopped.set(self.stopped.get() + 1);
    }
}

#[test]
fn u01_x19_producer_paused_above_the_high_water_mark_and_resumed_when_drained() {
    let dir = TempDir::new("producer");
    let address = dir.socket("s");
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let producer = Rc::new(CountingProducer::default());
    let at_write = Rc::new(Cell::new(0));
    let (p2, aw) = (producer.clone(), at_write.clone());
    let server = server(&log, move |p| {
        let (p2, aw) = (p2.clone(), aw.clone());
        p.made(move |t| {
            t.register_producer(p2.clone());
            t.write(&pattern(0, HIGH_WATER_MARK + 1));
            aw.set(p2.paused.get());
            t.lose_connection();
            Ok(())
        })
    });
    let _port = listen(&reactor, &address, server);
    let got = Rc::new(Cell::new(0));
    let g = got.clone();
    let client = client(&log, move |p| {
        let g = g.clone();
        p.data(move |_, data| {
            g.set(g.get() + data.len());
            Ok(())
        })
    })
    .lost(stop_on_client_lost(&reactor));
    connect(&reactor, &address, client);
    run(&reactor);
    assert_eq!(
        at_write.get(),
        1,
        "paused by the write that passed the mark"
    );
    assert_eq!(producer.resumed.get(), 1, "resumed once drained");
    assert_eq!(
        producer.stopped.get(),
        1,
        "stopped when the connection ended"
    );
    assert_eq!(got.get(), HIGH_WATER_MARK + 1);
}

const EMFILE_CHILD: &str = "TWISTCTL_UNIX_EMFILE_CHILD";

/// Runs only as the child of `u01_accept_emfile_pauses_and_recovers` (which sets the
/// environment variable and lowers the descriptor limit); in a normal run it returns.
#[test]
fn u01_accept_emfile_child_process() {
    let Some(dir) = std::env::var_os(EMFILE_CHILD) else {
        return;
    };
    let address = UnixAddress::Path(PathBuf::from(dir).join("s"));
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let made_at: Rc<RefCell<Vec<Duration>>> = Rc::new(RefCell::new(Vec::new()));
    let (m, r) = (made_at.clone(), reactor.clone());
    let server = server(&log, move |p| {
        let (m, r) = (m.clone(), r.clone());
        p.made(move |_| {
            m.borrow_mut().push(r.seconds());
            if m.borrow().len() == 3 {
                stop(&r);
            }
            Ok(())
        })
    });
    let _port = listen(&reactor, &address, server);
    let path = address.path().unwrap();
    let clients: Vec<StdStream> = (0..3).map(|_| StdStream::connect(path).unwrap()).collect();
    // Use up every descriptor left, so that accept fails with EMFILE.
    let mut hogs = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(file) => hogs.push(file),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "EMFILE: {e}");
                break;
            }
        }
    }
    let hogs = Rc::new(RefCell::new(hogs));
    let freed_at = Rc::new(Cell::new(Duration::ZERO));
    let (h, f, r) = (hogs.clone(), freed_at.clone(), reactor.clone());
    reactor.call_later(Duration::from_millis(350), move || {
        h.borrow_mut().clear();
        f.set(r.seconds());
    });
    run(&reactor);
    let made_at = made_at.borrow();
    assert_eq!(made_at.len(), 3, "{:?}", events(&log));
    for at in made_at.iter() {
        assert!(
            *at >= freed_at.get(),
            "accepted only once descriptors were free"
        );
    }
    drop(clients);
    println!("EMFILE-CHILD-OK");
}

#[test]
fn u01_accept_emfile_pauses_and_recovers() {
    let dir = TempDir::new("emfile");
    let exe = std::env::current_exe().unwrap();
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 64 && exec "$0" "$@""#)
        .arg(&exe)
        .args([
            "u01_accept_emfile_child_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(EMFILE_CHILD, &dir.0)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("EMFILE-CHILD-OK"),
        "child failed: {}\n{stdout}\n{stderr}",
        output.status
    );
}

// ---------------------------------------------------------------------------------------
// U-02: permission bits; an existing path; stale sockets

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false)
}

fn listen_with(
    reactor: &Reactor,
    address: &UnixAddress,
    options: UnixListenOptions,
) -> Result<UnixPort, twistctl::reactor::stream::CannotListenError> {
    let log = new_log();
    reactor.listen_unix_with(address.clone(), Rc::new(server(&log, |p| p)), options)
}

#[test]
fn u02_the_socket_file_gets_the_mode_asked_for_whatever_the_umask() {
    let dir = TempDir::new("mode");
    let reactor = Reactor::new().unwrap();
    let default = dir.socket("default");
    let _a = listen_with(&reactor, &default, UnixListenOptions::default()).unwrap();
    assert_eq!(mode_of(default.path().unwrap()), 0o666, "Twisted's default");
    let private = dir.socket("private");
    let options = UnixListenOptions {
        mode: 0o600,
        ..UnixListenOptions::default()
    };
    let _b = listen_with(&reactor, &private, options).unwrap();
    assert_eq!(mode_of(private.path().unwrap()), 0o600);
    assert!(is_socket(private.path().unwrap()));
}

#[test]
fn u02_an_existing_path_is_address_in_use_and_left_alone() {
    let dir = TempDir::new("exists");
    let reactor = Reactor::new().unwrap();
    let address = dir.socket("file");
    std::fs::write(address.path().unwrap(), b"not a socket").unwrap();
    for remove_stale in [false, true] {
        let options = UnixListenOptions {
            remove_stale,
            ..UnixListenOptions::default()
        };
        let error = listen_with(&reactor, &address, options).expect_err("in use");
        assert_eq!(error.source.kind(), std::io::ErrorKind::AddrInUse);
        assert_eq!(error.address, Address::Unix(address.clone()));
        assert!(error.to_string().contains("unix:"), "{error}");
        // A path that is not a socket is never removed.
        assert_eq!(
            std::fs::read(address.path().unwrap()).unwrap(),
            b"not a socket"
        );
    }
}

#[test]
fn u02_a_stale_socket_is_taken_over_only_when_asked() {
    let dir = TempDir::new("stale");
    let reactor = Reactor::new().unwrap();
    let address = dir.socket("s");
    // A server that went away without removing its socket file.
    drop(StdListener::bind(address.path().unwrap()).unwrap());
    assert!(is_socket(address.path().unwrap()));
    let error = listen_with(&reactor, &address, UnixListenOptions::default()).expect_err("U-02");
    assert_eq!(error.source.kind(), std::io::ErrorKind::AddrInUse);
    let options = UnixListenOptions {
        remove_stale: true,
        ..UnixListenOptions::default()
    };
    let _port = listen_with(&reactor, &address, options).expect("the stale file is replaced");
    StdStream::connect(address.path().unwrap()).expect("ours now: it accepts");
}

#[test]
fn u02_a_live_socket_is_never_taken_over() {
    let dir = TempDir::new("live");
    let reactor = Reactor::new().unwrap();
    let address = dir.socket("s");
    let live = StdListener::bind(address.path().unwrap()).unwrap();
    let options = UnixListenOptions {
        remove_stale: true,
        ..UnixListenOptions::default()
    };
    let error = listen_with(&reactor, &address, options).expect_err("someone accepts on it");
    assert_eq!(error.source.kind(), std::io::ErrorKind::AddrInUse);
    // Still the other server's: a connect reaches it.
    let _client = StdStream::connect(address.path().unwrap()).unwrap();
    live.set_nonblocking(true).unwrap();
    assert!(
        live.accept().is_ok(),
        "the live listener got the connection"
    );
}

// ---------------------------------------------------------------------------------------
// U-03: the socket file goes with the port

#[test]
fn u03_stop_listening_removes_the_socket_file_then_the_factory_stops() {
    let dir = TempDir::new("unlink");
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let address = dir.socket("s");
    let port = listen(&reactor, &address, server(&log, |p| p));
    let path = address.path().unwrap().to_path_buf();
    assert!(is_socket(&path));
    let (r, l, p) = (reactor.clone(), log.clone(), path.clone());
    reactor.call_when_running(move || {
        let (r, l) = (r.clone(), l.clone());
        port.stop_listening().add_callback(move |()| {
            push(&l, format!("fired, file exists: {}", p.exists()));
            stop(&r);
            Step::Value(())
        });
    });
    run(&reactor);
    assert_eq!(
        events(&log),
        ["srvf:start", "srvf:stop", "fired, file exists: false"]
    );
    // The same path can be listened on again.
    let _again = listen(&reactor, &address, server(&log, |p| p));
}

#[test]
fn u03_a_file_the_port_did_not_create_is_left_alone() {
    let dir = TempDir::new("replaced");
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let address = dir.socket("s");
    let port = listen(&reactor, &address, server(&log, |p| p));
    let path = address.path().unwrap().to_path_buf();
    // Someone else removed ours and put their own file there.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"theirs").unwrap();
    let r = reactor.clone();
    reactor.call_when_running(move || {
        let r = r.clone();
        port.stop_listening().add_callback(move |()| {
            stop(&r);
            Step::Value(())
        });
    });
    run(&reactor);
    assert_eq!(std::fs::read(&path).unwrap(), b"theirs");
}

#[test]
fn u03_reactor_shutdown_removes_the_socket_file() {
    let dir = TempDir::new("shutdown");
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let address = dir.socket("s");
    let _port = listen(&reactor, &address, server(&log, |p| p));
    let r = reactor.clone();
    reactor.call_when_running(move || stop(&r));
    run(&reactor);
    assert!(!address.path().unwrap().exists(), "P-28, U-03");
    assert_eq!(events(&log), ["srvf:start", "srvf:stop"]);
}

// ---------------------------------------------------------------------------------------
// U-04: abstract names

#[test]
fn u04_abstract_names_connect_create_no_file_and_are_freed_on_stop() {
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let address = abstract_name("u04");
    let greeter = server(&log, |p| {
        p.made(|t| {
            t.write(b"hi");
            t.lose_connection();
            Ok(())
        })
    });
    let port = listen(&reactor, &address, greeter);
    assert_eq!(port.host(), address);
    assert!(port.host().to_string().starts_with("unix:@twistctl-test-"));
    let r = reactor.clone();
    let client = client(&log, |p| p).lost(move |_, _| {
        let r = r.clone();
        port.stop_listening().add_callback(move |()| {
            stop(&r);
            Step::Value(())
        });
    });
    connect(&reactor, &address, client);
    run(&reactor);
    let name = String::from_utf8_lossy(address.abstract_name().unwrap()).into_owned();
    assert!(!Path::new(&name).exists() && !Path::new(&format!("@{name}")).exists());
    assert!(events(&log).contains(&"cli:data".to_string()));
    // Freed: the name can be bound again.
    let _again = listen(&reactor, &address, server(&log, |p| p));
}

// ---------------------------------------------------------------------------------------
// U-05: connect errors, through the loop

/// Connects to `address` and returns the connect error, checking that nothing was
/// reported inside `connect_unix` (P-13).
fn connect_failure(address: &UnixAddress) -> ConnectError {
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let failure: Rc<RefCell<Option<ConnectError>>> = Rc::new(RefCell::new(None));
    let (f, r) = (failure.clone(), reactor.clone());
    let client = client(&log, |p| p).failed(move |_, e| {
        *f.borrow_mut() = Some(e.clone());
        stop(&r);
    });
    connect(&reactor, address, client);
    let started = ["cf:start", "cf:started(connecting=true)"];
    assert_eq!(events(&log), started, "nothing yet (P-13)");
    run(&reactor);
    let events = events(&log);
    assert_eq!(events.len(), 4, "{events:?}");
    assert_eq!(events[..2], started);
    assert!(events[2].starts_with("cf:failed("), "{events:?}");
    assert_eq!(events[3], "cf:stop");
    failure.borrow_mut().take().expect("a failure")
}

fn errno(error: &ConnectError) -> Option<i32> {
    match error {
        ConnectError::Refused(e) | ConnectError::Other(e) => e.raw_os_error(),
        _ => None,
    }
}

#[test]
fn u05_a_missing_path_fails_with_enoent() {
    let dir = TempDir::new("enoent");
    let error = connect_failure(&dir.socket("nobody"));
    assert!(matches!(error, ConnectError::Other(_)), "{error:?}");
    assert_eq!(errno(&error), Some(libc::ENOENT));
}

#[test]
fn u05_a_socket_nobody_accepts_on_is_refused() {
    let dir = TempDir::new("refused");
    let address = dir.socket("s");
    drop(StdListener::bind(address.path().unwrap()).unwrap());
    let error = connect_failure(&address);
    assert!(matches!(error, ConnectError::Refused(_)), "{error:?}");
    assert_eq!(errno(&error), Some(libc::ECONNREFUSED));
    let error = connect_failure(&abstract_name("nobody-accepts"));
    assert!(matches!(error, ConnectError::Refused(_)), "{error:?}");
}

#[test]
fn u05_a_path_without_permission_fails_with_eacces() {
    let dir = TempDir::new("eacces");
    let address = dir.socket("s");
    let _listener = StdListener::bind(address.path().unwrap()).unwrap();
    std::fs::set_permissions(
        address.path().unwrap(),
        std::fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    if !common::is_root() {
        let error = connect_failure(&address);
        assert_eq!(errno(&error), Some(libc::EACCES), "{error:?}");
        return;
    }
    // Root passes every permission check: connect as nobody, in a child.
    let exe = std::env::current_exe().unwrap();
    let output = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .args([
            "u05_eacces_child_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(EACCES_CHILD, address.path().unwrap())
        .output();
    let output = match output {
        Ok(output) => output,
        Err(error) => {
            eprintln!(
                "skipped: running as root and cannot run setpriv to drop privileges: {error}"
            );
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("EACCES-CHILD-OK"),
        "child failed: {}\n{stdout}\n{stderr}",
        output.status
    );
}

const EACCES_CHILD: &str = "TWISTCTL_UNIX_EACCES_CHILD";

/// Runs only as the child of `u05_a_path_without_permission_fails_with_eacces`, as an
/// unprivileged user; in a normal run it returns.
#[test]
fn u05_eacces_child_process() {
    let Some(path) = std::env::var_os(EACCES_CHILD) else {
        return;
    };
    let error = connect_failure(&UnixAddress::Path(PathBuf::from(path)));
    assert_eq!(errno(&error), Some(libc::EACCES), "{error:?}");
    println!("EACCES-CHILD-OK");
}

/// Linux answers ECONNREFUSED for a file that is not a socket; the reactor says
/// ENOTSOCK, so nobody is told a server has died where there never was a socket.
#[test]
fn u05_a_path_that_is_not_a_socket_fails_with_enotsock() {
    let dir = TempDir::new("notsock");
    let address = dir.socket("file");
    std::fs::write(address.path().unwrap(), b"").unwrap();
    let error = connect_failure(&address);
    assert!(matches!(error, ConnectError::Other(_)), "{error:?}");
    assert_eq!(errno(&error), Some(libc::ENOTSOCK), "{error:?}");
    // A directory, and a symbolic link to the file, are not sockets either.
    let directory = address.path().unwrap().parent().unwrap().to_path_buf();
    let error = connect_failure(&UnixAddress::Path(directory));
    assert_eq!(errno(&error), Some(libc::ENOTSOCK), "{error:?}");
    let link = dir.socket("link");
    std::os::unix::fs::symlink(address.path().unwrap(), link.path().unwrap()).unwrap();
    let error = connect_failure(&link);
    assert_eq!(errno(&error), Some(libc::ENOTSOCK), "{error:?}");
}

// ---------------------------------------------------------------------------------------
// U-06: addresses; peer credentials

type Seen = Rc<RefCell<Vec<(String, Address, Address, Option<PeerCredentials>)>>>;

fn record(tag: &'static str, seen: &Seen) -> impl Fn(Rec) -> Rec + 'static {
    let seen = seen.clone();
    move |p| {
        let seen = seen.clone();
        p.made(move |t| {
            seen.borrow_mut()
                .push((tag.into(), t.host(), t.peer(), t.peer_credentials()));
            t.lose_connection();
            Ok(())
        })
    }
}

#[test]
fn u06_host_and_peer_are_unix_addresses_and_credentials_name_the_peer() {
    let dir = TempDir::new("addresses");
    let address = dir.socket("s");
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let seen: Seen = Rc::new(RefCell::new(Vec::new()));
    // build_protocol is given the peer's address on both sides.
    let built_for: Rc<RefCell<Vec<String>>> = Rc::new(RefCell::new(Vec::new()));
    let noting = |tag: &'static str, protocol: &'static str| {
        let (b, l, shape) = (built_for.clone(), log.clone(), record(protocol, &seen));
        Fac::new(tag, &log, move |addr| {
            b.borrow_mut().push(format!("{protocol} {addr}"));
            Some(Box::new(shape(Rec::new(protocol, &l))))
        })
    };
    let port = listen(&reactor, &address, noting("srvf", "srv"));
    assert_eq!(port.host(), address);
    let client = noting("cf", "cli").lost(stop_on_client_lost(&reactor));
    let connector = connect(&reactor, &address, client);
    assert_eq!(connector.destination(), Address::Unix(address.clone()));
    run(&reactor);
    let seen = seen.borrow();
    let find = |tag: &str| seen.iter().find(|s| s.0 == tag).cloned().expect(tag);
    let listening = Address::Unix(address.clone());
    let unnamed = Address::Unix(UnixAddress::Unnamed);
    let (_, server_host, server_peer, server_credentials) = find("srv");
    let (_, client_host, client_peer, client_credentials) = find("cli");
    assert_eq!(server_host, listening);
    assert_eq!(server_peer, unnamed, "an unbound client is unnamed");
    assert_eq!(client_peer, listening);
    assert_eq!(client_host, unnamed);
    assert_eq!(server_peer.to_string(), "unix:");
    let mut built_for = built_for.borrow().clone();
    built_for.sort();
    assert_eq!(
        built_for,
        [format!("cli {listening}"), "srv unix:".to_string()]
    );
    // Both ends are this process.
    let me = std::process::id() as i32;
    let credentials = server_credentials.expect("the server knows who connected");
    assert_eq!(credentials.pid, me);
    assert_eq!(client_credentials.map(|c| c.pid), Some(me));
    let uid = std::fs::metadata(address.path().unwrap().parent().unwrap())
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap();
    assert_eq!(credentials.uid, uid, "the directory we made is ours");
}

#[test]
fn u06_tcp_connections_have_no_peer_credentials() {
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let seen: Seen = Rc::new(RefCell::new(Vec::new()));
    let port = reactor
        .listen_tcp(
            "127.0.0.1:0".parse().unwrap(),
            Rc::new(server(&log, record("srv", &seen))),
        )
        .unwrap();
    let client = client(&log, record("cli", &seen)).lost(stop_on_client_lost(&reactor));
    reactor.connect_tcp(port.host(), Rc::new(client), Some(WATCHDOG));
    run(&reactor);
    let seen = seen.borrow();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.3.is_none() && !s.2.is_unix()));
}

#[test]
fn u06_a_std_client_reads_what_the_server_wrote() {
    // Interoperability with a plain socket: the reactor's server, std's client.
    let dir = TempDir::new("std");
    let address = dir.socket("s");
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let r = reactor.clone();
    let server = server(&log, move |p| {
        let r = r.clone();
        p.data(|t, data| {
            t.write(data);
            t.lose_connection();
            Ok(())
        })
        .lost(move |_| stop(&r))
    });
    let _port = listen(&reactor, &address, server);
    let path = address.path().unwrap().to_path_buf();
    let client = std::thread::spawn(move || {
        let mut stream = StdStream::connect(path).unwrap();
        stream.set_read_timeout(Some(WATCHDOG)).unwrap();
        stream.write_all(b"echo me").unwrap();
        let mut back = Vec::new();
        stream.read_to_end(&mut back).unwrap();
        back
    });
    run(&reactor);
    assert_eq!(client.join().unwrap(), b"echo me");
}

// ---------------------------------------------------------------------------------------
// E-09: `unix:` endpoint descriptions listen and connect

type Outcome = Rc<RefCell<Option<Result<Connection, twistctl::reactor::Failure>>>>;

/// Connects by `description`; what the Deferred gave is there after the run.
fn connect_by_description(reactor: &Reactor, description: &str, factory: Fac) -> Outcome {
    let outcome: Outcome = Rc::new(RefCell::new(None));
    let o = outcome.clone();
    let _done = parse_client(description)
        .expect("a valid description")
        .connect(reactor, Rc::new(factory))
        .then(move |result| {
            *o.borrow_mut() = Some(result);
            Step::Value(())
        });
    outcome
}

#[test]
fn e09_u02_a_unix_server_description_listens_with_its_mode_and_a_client_one_connects() {
    let dir = TempDir::new("describe");
    let path = dir.path("d.sock");
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let server = server(&log, |p| {
        p.data(|t, data| {
            t.write(data);
            t.lose_connection();
            Ok(())
        })
    });
    let description = format!("unix:{}:mode=0640", path.display());
    let listening = parse_server(&description)
        .unwrap()
        .listen(&reactor, Rc::new(server))
        .expect("listening");
    let Listening::Unix(port) = &listening else {
        panic!("a UNIX port: {listening:?}");
    };
    assert_eq!(port.host(), UnixAddress::Path(path.clone()));
    assert_eq!(mode_of(&path), 0o640);
    let received = Rc::new(RefCell::new(Vec::new()));
    let (r, rc) = (received.clone(), reactor.clone());
    // An endpoint's factory is a plain Factory: the protocol's end stops the run.
    let client = client(&log, move |p| {
        let (r, rc) = (r.clone(), rc.clone());
        p.made(|t| {
            t.write(b"over a description");
            Ok(())
        })
        .data(move |_, data| {
            r.borrow_mut().extend_from_slice(data);
            Ok(())
        })
        .lost(move |_| stop(&rc))
    });
    let outcome = connect_by_description(&reactor, &format!("unix:{}", path.display()), client);
    run(&reactor);
    let connection = outcome
        .borrow_mut()
        .take()
        .expect("fired")
        .expect("connected");
    assert_eq!(
        connection.peer,
        Address::Unix(UnixAddress::Path(path.clone()))
    );
    assert!(
        connection.transport.peer_credentials().is_none(),
        "only while open"
    );
    assert_eq!(&*received.borrow(), b"over a description");
    // The Deferred fired after the protocol's connection_made (E-01).
    assert_eq!(side(&log, "cli")[0], "cli:made");
    assert!(
        !path.exists(),
        "the reactor's shutdown removed the socket file (U-03)"
    );
}

#[test]
fn e09_u02_a_unix_server_description_takes_over_a_stale_socket_but_not_a_live_one() {
    let dir = TempDir::new("describe-stale");
    let path = dir.path("s");
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let description = format!("unix:{}", path.display());
    let live = StdListener::bind(&path).unwrap();
    let error = parse_server(&description)
        .unwrap()
        .listen(&reactor, Rc::new(server(&log, |p| p)))
        .expect_err("a live socket is never taken over");
    assert!(error.to_string().contains("in use"), "{error}");
    drop(live); // now stale: the file stays, nobody accepts
    let listening = parse_server(&description)
        .unwrap()
        .listen(&reactor, Rc::new(server(&log, |p| p)))
        .expect("a stale socket file is taken over");
    assert!(matches!(listening, Listening::Unix(_)));
    StdStream::connect(&path).expect("ours now");
}

#[test]
fn e09_u04_u05_a_unix_client_description_reports_why_it_failed() {
    let dir = TempDir::new("describe-fail");
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let missing = connect_by_description(
        &reactor,
        &format!("unix:{}", dir.path("none").display()),
        client(&log, |p| p),
    );
    let refused_name = abstract_name("described-refused");
    let UnixAddress::Abstract(name) = &refused_name else {
        unreachable!()
    };
    let refused = connect_by_description(
        &reactor,
        &format!("unix:@{}", String::from_utf8_lossy(name)),
        client(&log, |p| p),
    );
    let r = reactor.clone();
    reactor.call_later(Duration::from_millis(20), move || stop(&r));
    run(&reactor);
    let error_of = |outcome: &Outcome| {
        let failure = outcome
            .borrow_mut()
            .take()
            .expect("fired")
            .expect_err("failed");
        failure
            .downcast_ref::<UnixConnectError>()
            .cloned()
            .expect("a UnixConnectError")
    };
    let missing = error_of(&missing);
    assert_eq!(errno(&missing.error), Some(libc::ENOENT));
    assert!(
        missing.to_string().starts_with("cannot connect to unix:/"),
        "{missing}"
    );
    let refused = error_of(&refused);
    assert!(
        matches!(refused.error, ConnectError::Refused(_)),
        "{refused}"
    );
    assert_eq!(refused.address, refused_name);
}

#[test]
fn e07_cancelling_a_unix_connect_stops_it() {
    let dir = TempDir::new("describe-cancel");
    let path = dir.path("s");
    // A listener whose queue is never served: the connect completes in the kernel,
    // and the cancel comes before the reactor gets to it.
    let _listener = StdListener::bind(&path).unwrap();
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let outcome: Outcome = Rc::new(RefCell::new(None));
    let o = outcome.clone();
    let deferred = parse_client(&format!("unix:{}", path.display()))
        .unwrap()
        .connect(&reactor, Rc::new(client(&log, |p| p)));
    deferred.cancel();
    let _done = deferred.then(move |result| {
        *o.borrow_mut() = Some(result);
        Step::Value(())
    });
    let failure = outcome
        .borrow_mut()
        .take()
        .expect("fired at once")
        .expect_err("cancelled");
    let error = failure.downcast_ref::<UnixConnectError>().expect("typed");
    assert!(matches!(error.error, ConnectError::UserAborted), "{error}");
    assert_eq!(
        events(&log),
        ["cf:start", "cf:stop"],
        "no protocol was built"
    );
}

// ---------------------------------------------------------------------------------------
// A listener's full queue: a UNIX connect answers EAGAIN instead of waiting in the
// kernel, so the connector tries again until its timeout.

/// A listener at `path` with a queue of one that already holds a connection nobody
/// accepted: the next connect finds the queue full. Returns it and the queued client.
fn full_listener(path: &Path) -> (socket2::Socket, StdStream) {
    let listener =
        socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
    listener
        .bind(&socket2::SockAddr::unix(path).unwrap())
        .unwrap();
    listener.listen(0).unwrap();
    let queued = StdStream::connect(path).unwrap();
    (listener, queued)
}

#[test]
fn u05_a_full_listener_queue_is_waited_out() {
    let dir = TempDir::new("queue-full");
    let address = dir.socket("s");
    let (listener, _queued) = full_listener(address.path().unwrap());
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let client = client(&log, |p| {
        p.made(|t| {
            t.lose_connection();
            Ok(())
        })
    })
    .lost(stop_on_client_lost(&reactor));
    connect(&reactor, &address, client);
    // Make room after a while: accept the queued connection.
    let l = log.clone();
    reactor.call_later(Duration::from_millis(30), move || {
        let (accepted, _) = listener.accept().expect("the queued connection");
        push(&l, "room made");
        // Keep the listener (and what it accepted) until the end of the run.
        std::mem::forget((listener, accepted));
    });
    run(&reactor);
    assert_eq!(
        events(&log),
        [
            "cf:start",
            "cf:started(connecting=true)",
            "room made",
            "cf:build",
            "cli:made",
            "cli:lost(Done)",
            "cf:client_lost(Done)",
            "cf:stop",
        ]
    );
}

#[test]
fn u05_x14_a_queue_that_stays_full_times_out() {
    let dir = TempDir::new("queue-stays-full");
    let address = dir.socket("s");
    let (_listener, _queued) = full_listener(address.path().unwrap());
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let failure = Rc::new(RefCell::new(None));
    let (f, r) = (failure.clone(), reactor.clone());
    let client = client(&log, |p| p).failed(move |_, e| {
        *f.borrow_mut() = Some(e.clone());
        stop(&r);
    });
    let started = reactor.seconds();
    reactor.connect_unix(
        address.clone(),
        Rc::new(client),
        Some(Duration::from_millis(80)),
    );
    run(&reactor);
    let waited = reactor.seconds() - started;
    assert!(
        matches!(failure.borrow().as_ref(), Some(ConnectError::TimedOut)),
        "{:?}",
        failure.borrow()
    );
    assert!(waited >= Duration::from_millis(80), "{waited:?}");
}

#[test]
fn u05_p28_a_connect_waiting_for_room_ends_at_shutdown() {
    let dir = TempDir::new("queue-full-shutdown");
    let address = dir.socket("s");
    let (_listener, _queued) = full_listener(address.path().unwrap());
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let failure = Rc::new(RefCell::new(None));
    let f = failure.clone();
    let waiting = client(&log, |p| p).failed(move |_, e| {
        *f.borrow_mut() = Some(e.to_string());
    });
    // The caller keeps no handle: the wait must keep the connector itself.
    drop(connect(&reactor, &address, waiting));
    let r = reactor.clone();
    reactor.call_later(Duration::from_millis(20), move || stop(&r));
    run(&reactor);
    let events = events(&log);
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(events[2].starts_with("cf:failed(Other("), "{events:?}");
    assert_eq!(events[3], "cf:stop");
    let failure = failure.borrow().clone().expect("told");
    assert!(failure.contains("shutting down"), "{failure}");
}

// ---------------------------------------------------------------------------------------
// Checked connects over UNIX sockets (a probe's banner check, a TLS handshake)

/// Passes its check when the banner starts with the wanted bytes, fails it otherwise.
struct BannerCheck {
    wanted: &'static [u8],
    log: Log,
}

struct Banner {
    wanted: &'static [u8],
    check: CheckHandle,
    log: Log,
}

impl twistctl::reactor::Protocol for Banner {
    fn data_received(
        &mut self,
        _: &TransportRef,
        data: &[u8],
    ) -> twistctl::reactor::ProtocolResult {
        push(
            &self.log,
            format!("banner {}", String::from_utf8_lossy(data)),
        );
        if data.starts_with(self.wanted) {
            self.check.pass();
        } else {
            self.check
                .fail(twistctl::reactor::Failure::msg("unexpected banner"));
        }
        Ok(())
    }

    fn connection_lost(&mut self, _: &twistctl::reactor::CloseReason) {
        push(&self.log, "probe lost");
    }
}

impl CheckedFactory for BannerCheck {
    fn build_protocol(
        &self,
        addr: Address,
        check: CheckHandle,
    ) -> Option<Box<dyn twistctl::reactor::Protocol>> {
        push(&self.log, format!("build for {addr}"));
        Some(Box::new(Banner {
            wanted: self.wanted,
            check,
            log: self.log.clone(),
        }))
    }
}

/// Serves `banner` to each client on a fresh socket, connects with a banner check for
/// `wanted`, and returns the outcome and the log.
fn checked_connect(banner: &'static [u8], wanted: &'static [u8]) -> (Outcome, Log, UnixAddress) {
    let dir = TempDir::new("checked");
    let address = dir.socket("s");
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let greeter = server(&log, move |p| {
        p.made(move |t| {
            t.write(banner);
            Ok(())
        })
    });
    let _port = listen(&reactor, &address, greeter);
    let outcome: Outcome = Rc::new(RefCell::new(None));
    let (o, r) = (outcome.clone(), reactor.clone());
    let check = Rc::new(BannerCheck {
        wanted,
        log: log.clone(),
    });
    let _done = UnixEndpoint::new(&reactor, address.clone())
        .connect_checked(check)
        .then(move |result| {
            *o.borrow_mut() = Some(result);
            // Let the connection's own end (a failed check closes it) show in the log.
            let r2 = r.clone();
            r.call_later(Duration::from_millis(20), move || stop(&r2));
            Step::Value(())
        });
    run(&reactor);
    drop(dir);
    (outcome, log, address)
}

#[test]
fn e01_a_checked_unix_connect_fires_once_the_check_passed() {
    let (outcome, log, address) = checked_connect(b"HELLO there", b"HELLO");
    let connection = outcome.borrow_mut().take().expect("fired").expect("passed");
    assert_eq!(connection.peer, Address::Unix(address.clone()));
    let events = events(&log);
    assert!(events.contains(&format!("build for {}", Address::Unix(address))));
    assert!(
        events.contains(&"banner HELLO there".to_string()),
        "{events:?}"
    );
}

#[test]
fn e01_a_failed_check_closes_the_unix_connection_and_says_why() {
    let (outcome, log, address) = checked_connect(b"GO AWAY", b"HELLO");
    let failure = outcome
        .borrow_mut()
        .take()
        .expect("fired")
        .expect_err("failed");
    let error = failure
        .downcast_ref::<UnixCheckError>()
        .expect("a UnixCheckError");
    assert_eq!(error.address, address);
    assert!(error.to_string().contains("unexpected banner"), "{error}");
    assert!(
        events(&log).contains(&"probe lost".to_string()),
        "closed: {:?}",
        events(&log)
    );
}

#[test]
fn u02_u05_a_path_too_long_for_a_socket_is_a_clear_error_on_both_sides() {
    let long = UnixAddress::Path(PathBuf::from(format!("/tmp/{}", "x".repeat(120))));
    let reactor = Reactor::new().unwrap();
    let error = listen_with(&reactor, &long, UnixListenOptions::default()).expect_err("too long");
    let text = error.to_string();
    assert!(text.starts_with("cannot listen on unix:/tmp/xxx"), "{text}");
    assert!(text.contains("shorter"), "says why: {text}");
    let error = connect_failure(&long);
    assert!(error.to_string().contains("shorter"), "{error}");
}
