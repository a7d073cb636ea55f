//! Integration tests: the real server on an ephemeral loopback port, driven by real clients
//! (tokio-tungstenite, reqwest, Python `websockets`), never by the server's own types.

mod admin;
mod api;
mod architecture;
mod auth;
mod bad_input;
mod binary;
mod cli;
mod cluster;
mod config_reference;
mod demos;
mod deploy;
mod disconnect;
mod drain;
mod durable;
mod helpers;
mod http_front;
mod http_streaming;
mod limits;
mod logs;
mod metrics;
mod mixed_transports;
mod node_client;
mod openapi;
mod poll;
mod presence;
mod proxies;
mod pusher;
mod python_client;
mod readme;
mod resume;
mod rust_client;
mod shutdown;
mod tls;
mod webhooks;
mod websocket;
