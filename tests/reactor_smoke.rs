//! Smoke check of the loop: a timer stops the reactor.
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;
use twistctl::reactor::{Reactor, StopReason};

#[test]
fn r01_run_returns_after_stop_from_timer() {
    let reactor = Reactor::new().unwrap();
    let fired = Rc::new(Cell::new(false));
    let (r, f) = (reactor.clone(), fired.clone());
    reactor.call_later(Duration::from_millis(5), move || {
        f.set(true);
        r.stop()
    });
    assert_eq!(reactor.run().unwrap(), StopReason::Stopped);
    assert!(fired.get());
}
