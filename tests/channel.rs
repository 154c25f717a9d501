//! `Reactor::channel`: values sent from other threads reach the reactor thread.
use std::rc::Rc;
use std::time::Duration;
use twistctl::reactor::Reactor;

#[test]
fn r14_channel_values_from_threads_reach_the_receiver_in_order() {
    let reactor = Reactor::new().unwrap();
    let received = Rc::new(std::cell::RefCell::new(Vec::new()));
    let got = received.clone();
    let sender = reactor.channel(move |r: &Reactor, (thread, n): (u32, u32)| {
        got.borrow_mut().push((thread, n));
        if got.borrow().len() == 2000 {
            r.stop().unwrap();
        }
    });
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let sender = sender.clone();
            std::thread::spawn(move || (0..1000).for_each(|n| sender.send((t, n))))
        })
        .collect();
    let r = reactor.clone();
    let watchdog = reactor.call_later(Duration::from_secs(10), move || r.stop());
    reactor.run().unwrap();
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert!(
        watchdog.active(),
        "stopped by the receiver, not the watchdog"
    );
    let received = received.borrow();
    for t in 0..2 {
        let from_t: Vec<u32> = received.iter().filter(|v| v.0 == t).map(|v| v.1).collect();
        assert_eq!(from_t, (0..1000).collect::<Vec<_>>());
    }
}
