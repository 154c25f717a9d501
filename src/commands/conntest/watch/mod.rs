//! `conntest --watch`: probes repeated on a fixed grid, a line each, and a summary
//! with loss and latency when stopped (a TCP ping).
//!
//! - [`stats`]: per-target counts, latency statistics and the up/down history;
//! - [`lines`]: what is printed, as text and as JSON.

pub mod lines;
pub mod stats;
