//! Smoke check of TCP: an echo server and a client on loopback.
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;
use twistctl::reactor::tcp::{ClientFactory, Connector};
use twistctl::reactor::{
    CloseReason, ConnectError, Factory, Protocol, ProtocolResult, Reactor, TransportRef,
};

struct Echo;
impl Protocol for Echo {
    fn data_received(&mut self, t: &TransportRef, data: &[u8]) -> ProtocolResult {
        t.write(data);
        Ok(())
    }
}
struct EchoFactory;
impl Factory for EchoFactory {
    fn build_protocol(&self, _: SocketAddr) -> Option<Box<dyn Protocol>> {
        Some(Box::new(Echo))
    }
}

struct Client {
    got: Rc<RefCell<Vec<u8>>>,
}
impl Protocol for Client {
    fn connection_made(&mut self, t: &TransportRef) -> ProtocolResult {
        t.write(b"hello");
        Ok(())
    }
    fn data_received(&mut self, t: &TransportRef, data: &[u8]) -> ProtocolResult {
        self.got.borrow_mut().extend_from_slice(data);
        if self.got.borrow().len() >= 5 {
            t.lose_connection();
        }
        Ok(())
    }
}
struct ClientF {
    reactor: Reactor,
    got: Rc<RefCell<Vec<u8>>>,
    lost: Rc<RefCell<Option<String>>>,
}
impl Factory for ClientF {
    fn build_protocol(&self, _: SocketAddr) -> Option<Box<dyn Protocol>> {
        Some(Box::new(Client {
            got: self.got.clone(),
        }))
    }
}
impl ClientFactory for ClientF {
    fn client_connection_lost(&self, _: &Connector, reason: &CloseReason) {
        *self.lost.borrow_mut() = Some(reason.to_string());
        let _ = self.reactor.stop();
    }
    fn client_connection_failed(&self, _: &Connector, reason: &ConnectError) {
        *self.lost.borrow_mut() = Some(reason.to_string());
        let _ = self.reactor.stop();
    }
}

#[test]
fn echo_round_trip() {
    let reactor = Reactor::new().unwrap();
    let port = reactor
        .listen_tcp("127.0.0.1:0".parse().unwrap(), Rc::new(EchoFactory))
        .unwrap();
    let got = Rc::new(RefCell::new(Vec::new()));
    let lost = Rc::new(RefCell::new(None));
    reactor.connect_tcp(
        port.host(),
        Rc::new(ClientF {
            reactor: reactor.clone(),
            got: got.clone(),
            lost: lost.clone(),
        }),
        Some(Duration::from_secs(5)),
    );
    let r = reactor.clone();
    reactor.call_later(Duration::from_secs(10), move || r.stop());
    reactor.run().unwrap();
    assert_eq!(&*got.borrow(), b"hello");
    assert_eq!(lost.borrow().as_deref(), Some("connection closed cleanly"));
}
