//! Herald's load generator, as a library so the smoke test can drive it in-process.
//!
//! A run opens N subscribers over one transport, spread over C channels, ramping at a bounded
//! rate; then publishes at a fixed rate R for S seconds with a fixed payload size, drains, and
//! reports deliveries, loss, duplicates, order, latency, and the server's CPU and memory.
//!
//! - [`target`]: how to subscribe and publish on each server (Herald, a plain WebSocket
//!   broadcast server, NATS over WebSocket, Socket.IO);
//! - [`payload`]: the sequence number and timestamp each message carries, and the per-subscriber
//!   bookkeeping of what arrived;
//! - [`procfs`]: the server's CPU time and RSS from `/proc`;
//! - [`report`]: the result, as a JSON line and a Markdown row.

pub mod payload;
pub mod procfs;
pub mod report;
pub mod run;
pub mod target;

pub use report::Report;
pub use run::{RunConfig, run};
pub use target::{Target, Transport};
