//! Herald's engines for more than one node, behind the core's [`herald_core::Engine`] trait
//! (the memory engine, for one node, is in the core):
//!
//! - [`redis`]: Redis Pub/Sub for fan-out, Streams and Lua for history with contiguous offsets,
//!   hashes and sorted sets for presence; one or several Redis servers (shards).

pub mod redis;

pub use redis::RedisEngine;
