//! The WebSocket's socket, watched: it notes whether its read side may have input, so a
//! session woken to deliver pushes does not also attempt a read (through the frame reader and
//! the socket's readiness lock) on every wake-up.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The socket type of every Herald WebSocket: hyper's upgraded connection, watched.
pub type Socket = WatchedIo<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

/// Whether the read side may have input, and the task to wake when it does.
#[derive(Default)]
struct ReadWatch {
    may_have_input: AtomicBool,
    task: AtomicWaker,
}

impl Wake for ReadWatch {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.may_have_input.store(true, Ordering::Release);
        self.task.wake();
    }
}

pub struct WatchedIo<IO> {
    io: IO,
    watch: Arc<ReadWatch>,
}

impl<IO> WatchedIo<IO> {
    pub fn new(io: IO) -> Self {
        let watch = Arc::new(ReadWatch { may_have_input: AtomicBool::new(true), task: AtomicWaker::new() });
        Self { watch, io }
    }

    /// Ready when a read may make progress: input arrived (or may have) since the last read
    /// found none. Otherwise the task is woken when input arrives.
    pub fn poll_input(&self, context: &mut Context<'_>) -> Poll<()> {
        if self.watch.may_have_input.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.watch.task.register(context.waker());
        // Input may have arrived before the task was registered.
        if self.watch.may_have_input.load(Ordering::Acquire) { Poll::Ready(()) } else { Poll::Pending }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for WatchedIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        this.watch.task.register(context.waker());
        // Cleared before the read: input arriving from here on sets it again.
        this.watch.may_have_input.store(false, Ordering::Release);
        // Made for each read rather than kept: reads are rare next to pushes, and every open
        // connection would hold it.
        let read_waker = Waker::from(this.watch.clone());
        let read = Pin::new(&mut this.io).poll_read(&mut Context::from_waker(&read_waker), buf);
        if read.is_ready() {
            // More may be waiting behind what was read (or the end, or an error, to report).
            this.watch.may_have_input.store(true, Ordering::Release);
        }
        read
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for WatchedIo<IO> {
    crate::transport::delegate_async_write!(io);
}
