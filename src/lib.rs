//! twistctl: a Twisted-style reactor on `mio`, and the network tools built on it.
pub mod protocols;
pub mod reactor;
