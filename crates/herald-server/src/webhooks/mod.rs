//! Webhooks: Herald calling other backends, signed, from a durable outbox, at least once.
//!
//! - [`registry`]: the endpoints, and which of them an event goes to;
//! - [`events`]: events into the outbox: a publication's event is committed before its publish
//!   is acknowledged; channel events (occupied, vacated, join, leave) are written as reported;
//! - [`lanes`]: delivery, one lane (endpoint × channel) at a time and in order, with retries on
//!   the schedule (with jitter), dead letters (replayable) and the endpoint's health (`410 Gone`
//!   or failing longer than `disable_after` disables it);
//! - [`dispatcher`]: the three started together over one outbox;
//! - [`rules`]: what an endpoint may ask for; [`signature`]: Standard Webhooks signing;
//!   [`target`]: where webhooks may go (checked at registration and at every delivery;
//!   redirects are not followed).
//!
//! The management API under `/api/webhooks` is [`crate::api::webhooks`].

pub mod dispatcher;
pub mod events;
pub mod lanes;
pub mod registry;
pub mod rules;
pub mod signature;
pub mod target;

pub use dispatcher::Webhooks;
pub use registry::EndpointState;
