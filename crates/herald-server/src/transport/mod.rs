//! One module per transport. Transports are thin: they translate between the wire and the hub.
//!
//! - [`ws`]: `GET /ws`, the bidirectional JSON protocol;
//! - [`streaming`]: `GET /sse` and `GET /stream` (NDJSON);
//! - [`poll`]: `GET /poll`, long- and short-polling;
//! - [`subscription`]: what the HTTP transports share (query, cursor, recovery, clean-up);
//! - [`handoff`]: how the long-lived HTTP transports leave their work to Herald's HTTP/1 front
//!   ([`crate::front`]), which runs it without hyper's per-connection buffers;
//! - [`origin`], [`limits`]: the Origin allow-list and per-IP stream admission.

/// The `AsyncWrite` methods of an IO wrapper that only changes how it reads: each one passes
/// through to the wrapped IO in field `$io`.
macro_rules! delegate_async_write {
    ($io:ident) => {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            context: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::pin::Pin::new(&mut self.$io).poll_write(context, buf)
        }

        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            context: &mut std::task::Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::pin::Pin::new(&mut self.$io).poll_write_vectored(context, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            self.$io.is_write_vectored()
        }

        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            context: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.$io).poll_flush(context)
        }

        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            context: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.$io).poll_shutdown(context)
        }
    };
}
pub(crate) use delegate_async_write;

pub mod handoff;
pub mod limits;
pub mod origin;
pub mod poll;
pub mod streaming;
pub mod subscription;
pub mod ws;

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Resolves when `token` is cancelled, after a random part of `spread` (the drain period: so
/// that the clients of a stopping server do not all reconnect at once), and is cheap to poll on
/// every wake-up: the waiter is registered once (polling a `cancelled()` future again takes the
/// token's lock), then only the token's flag is read. A connection's task is always the one
/// polling it, so the first waker stays the right one.
pub fn stop_signal<'a: 'w, 'w>(
    token: &'a CancellationToken,
    mut waiter: Pin<&'w mut WaitForCancellationFuture<'a>>,
    spread: std::time::Duration,
) -> impl Future<Output = ()> + Unpin + 'w {
    let mut registered = false;
    // Kept small (every connection holds this): milliseconds, and the timer once stopping.
    let spread_ms = u32::try_from(spread.as_millis()).unwrap_or(u32::MAX);
    let mut turn: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(move |context| {
        if token.is_cancelled() {
            if spread_ms == 0 {
                return Poll::Ready(());
            }
            let turn = turn.get_or_insert_with(|| {
                let wait = std::time::Duration::from_millis(fastrand::u64(0..u64::from(spread_ms)));
                Box::pin(tokio::time::sleep(wait))
            });
            return turn.as_mut().poll(context);
        }
        if !registered {
            registered = true;
            return waiter.as_mut().poll(context);
        }
        Poll::Pending
    })
}

/// When a client's token runs out, as a timer (boxed: most connections have none, or never
/// reach it); `None` without an expiry.
pub type Expiry = Option<Pin<Box<tokio::time::Sleep>>>;

/// The timer for when `identity` expires (its token's `exp`).
pub fn expiry(identity: &crate::auth::Identity) -> Expiry {
    identity.expires_at().map(|expires_at| {
        let left = expires_at.saturating_sub(crate::auth::unix_seconds());
        Box::pin(tokio::time::sleep(std::time::Duration::from_secs(left)))
    })
}

/// Resolves when the token expires; never without one.
pub async fn until_expiry(expiry: &mut Expiry) {
    match expiry {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}
