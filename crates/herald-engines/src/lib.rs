//! Herald's engines for more than one node, behind the core's [`herald_core::Engine`] trait
//! (the memory engine, for one node, is in the core):
//!
//! - [`redis`]: Redis Pub/Sub for fan-out, Streams and Lua for history with contiguous offsets,
//!   hashes and sorted sets for presence; one or several Redis servers (shards);
//! - [`nats`]: NATS core subjects for fan-out, JetStream for history (offsets kept contiguous
//!   by expected-last-subject-sequence appends), key-value buckets for presence.

pub mod nats;
pub mod redis;
mod shared;

pub use nats::NatsEngine;
pub use redis::RedisEngine;
