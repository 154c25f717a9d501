//! The talk commands: a line chat between an operator at the server and one at each
//! client. The console and the display rules are shared by both sides.

pub mod certificate;
pub mod client;
pub mod commands;
pub mod console;
pub mod known_hosts;
pub mod registry;
pub mod server;
pub mod server_client;
pub mod talk_server;
pub mod trust;
