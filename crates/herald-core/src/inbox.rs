//! A connection's inbox: the bounded queue the hub pushes into and the connection's task drains,
//! and the mark that the connection fell behind.
//!
//! Made for many mostly idle connections. An inbox allocates nothing until a push arrives, and
//! one drained after a burst lets its buffer go; a tokio `mpsc` channel holds about 1 KiB per
//! connection from the start (its cache-padded state and a first block of 32 slots). A push
//! takes the inbox's own lock for a few instructions: the lock is per connection, so only that
//! connection's task competes for it, and it is never held across an await.
//!
//! The receiving task is woken when its inbox goes from empty to not empty, and when it is
//! marked lagged, not on every push: a burst costs one wake-up.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::presence::{PresenceEvent, SubscriptionCount};
use crate::publication::Publication;

/// What the hub pushes to a connection.
#[derive(Debug, Clone)]
pub enum Push {
    Publication(Arc<Publication>),
    /// A join or leave, in a `join_leave` namespace.
    Presence(Arc<PresenceEvent>),
    /// The channel's local subscriber count changed; only to connections that asked for it.
    Count(Arc<SubscriptionCount>),
    /// The server tells the connection what to do (the server API's `disconnect`, `subscribe`,
    /// `unsubscribe`; a token's server-side subscriptions).
    Control(Arc<Control>),
}

/// What the server tells one connection to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// End the connection, saying why and whether the client should come back.
    Disconnect { reason: String, reconnect: bool },
    /// Stop delivering one channel to the connection, saying why; the connection stays.
    Unsubscribe { channel: crate::ChannelName, reason: String },
    /// Subscribe the connection to a channel (a server-side subscription: the token's `subs`
    /// or the server API's `subscribe`), recovering from `since` when given.
    Subscribe { channel: crate::ChannelName, since: Option<crate::Position> },
}

/// Buffers larger than this are let go once drained, so a burst does not stay in every idle
/// connection's memory.
const KEPT_CAPACITY: usize = 16;

/// The connection fell behind: a push found its inbox full (or its channel's history was lost)
/// and was not queued. The connection must be closed with a position it can recover from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lagged;

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct State {
    pushes: VecDeque<Push>,
    /// The receiving task, once it has waited.
    waker: Option<Waker>,
    lagged: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned one still holds a consistent queue.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Creates an inbox holding at most `capacity` pushes, and the sender the hub keeps.
pub(crate) fn inbox(capacity: usize) -> (InboxSender, Inbox) {
    let shared = Arc::new(Shared { state: Mutex::default(), capacity: capacity.max(1) });
    (InboxSender(shared.clone()), Inbox(shared))
}

/// The hub's end of an inbox.
#[derive(Debug, Clone)]
pub(crate) struct InboxSender(Arc<Shared>);

impl InboxSender {
    /// Queues `push`; a full inbox is marked lagged instead (and the push dropped).
    pub(crate) fn push(&self, push: Push) {
        let mut state = self.0.lock();
        if state.lagged {
            return;
        }
        if state.pushes.len() >= self.0.capacity {
            state.lagged = true;
        } else {
            state.pushes.push_back(push);
            if state.pushes.len() > 1 {
                // The task was woken by the first one and has not drained yet.
                return;
            }
        }
        if let Some(waker) = &state.waker {
            waker.wake_by_ref();
        }
    }

    /// Queues a control, even when the queue is full: a connection told to go must hear it (a
    /// lagging one is ending anyway).
    pub(crate) fn push_control(&self, push: Push) {
        let mut state = self.0.lock();
        if state.lagged {
            return;
        }
        state.pushes.push_back(push);
        if state.pushes.len() == 1
            && let Some(waker) = &state.waker
        {
            waker.wake_by_ref();
        }
    }

    /// Marks the connection lagged (its channel's history was lost) and wakes it.
    pub(crate) fn mark_lagged(&self) {
        let mut state = self.0.lock();
        state.lagged = true;
        if let Some(waker) = &state.waker {
            waker.wake_by_ref();
        }
    }
}

/// The connection's end of its inbox.
#[derive(Debug)]
pub struct Inbox(Arc<Shared>);

impl Inbox {
    /// Moves up to `max` queued pushes into `batch`, oldest first, and says how many; waits
    /// while there are none. Fails once the connection lagged.
    pub fn poll_recv_many(
        &mut self,
        context: &mut Context<'_>,
        batch: &mut Vec<Push>,
        max: usize,
    ) -> Poll<Result<usize, Lagged>> {
        let mut state = self.0.lock();
        if state.lagged {
            return Poll::Ready(Err(Lagged));
        }
        if state.pushes.is_empty() {
            register(&mut state, context);
            return Poll::Pending;
        }
        let count = state.pushes.len().min(max);
        batch.extend(state.pushes.drain(..count));
        if state.pushes.is_empty() && state.pushes.capacity() > KEPT_CAPACITY {
            state.pushes = VecDeque::new();
        }
        Poll::Ready(Ok(count))
    }

    /// [`Inbox::poll_recv_many`] as a future (a plain poll function: it adds nothing but its
    /// arguments to the state of a connection waiting on it).
    pub fn recv_many<'a>(
        &'a mut self,
        batch: &'a mut Vec<Push>,
        max: usize,
    ) -> impl Future<Output = Result<usize, Lagged>> + 'a {
        poll_fn(move |context| self.poll_recv_many(context, batch, max))
    }

    /// The oldest queued push, if any (whether or not the connection lagged).
    pub fn try_recv(&mut self) -> Option<Push> {
        self.0.lock().pushes.pop_front()
    }

    pub fn is_lagged(&self) -> bool {
        self.0.lock().lagged
    }

    /// Resolves once the connection is marked lagged.
    pub fn poll_lagged(&self, context: &mut Context<'_>) -> Poll<Lagged> {
        let mut state = self.0.lock();
        if state.lagged {
            return Poll::Ready(Lagged);
        }
        register(&mut state, context);
        Poll::Pending
    }

    /// [`Inbox::poll_lagged`] as a future.
    pub fn lagged(&self) -> impl Future<Output = Lagged> + '_ {
        poll_fn(|context| self.poll_lagged(context))
    }
}

/// Remembers the receiving task's waker (cloned only when it changed).
fn register(state: &mut State, context: &Context<'_>) {
    match &state.waker {
        Some(waker) if waker.will_wake(context.waker()) => {}
        _ => state.waker = Some(context.waker().clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::ChannelName;
    use crate::position::{Epoch, Position};
    use crate::publication::{Payload, Publication};
    use std::task::Wake;

    fn push(offset: u64) -> Push {
        let channel = ChannelName::new("a").unwrap();
        let position = Position { epoch: Epoch::new("e"), offset };
        Push::Publication(Arc::new(Publication::new(channel, position, Payload::from_static(b"1"), 0)))
    }

    fn offset(push: &Push) -> u64 {
        match push {
            Push::Publication(publication) => publication.position.offset,
            Push::Presence(_) | Push::Count(_) | Push::Control(_) => panic!("not a publication"),
        }
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct CountingWaker(std::sync::atomic::AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl CountingWaker {
        fn count(&self) -> usize {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[test]
    fn pushes_come_out_in_order_and_a_burst_wakes_once() {
        let (sender, mut inbox) = inbox(8);
        let counter = Arc::new(CountingWaker::default());
        let waker = Waker::from(counter.clone());
        let mut context = Context::from_waker(&waker);
        let mut batch = Vec::new();
        assert!(inbox.poll_recv_many(&mut context, &mut batch, 8).is_pending());
        for offset in 1..=3 {
            sender.push(push(offset));
        }
        assert_eq!(counter.count(), 1, "one wake-up for the burst");
        assert_eq!(inbox.poll_recv_many(&mut context, &mut batch, 2), Poll::Ready(Ok(2)));
        assert_eq!(inbox.poll_recv_many(&mut context, &mut batch, 8), Poll::Ready(Ok(1)));
        assert_eq!(batch.iter().map(offset).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(inbox.poll_recv_many(&mut context, &mut batch, 8).is_pending());
        sender.push(push(4));
        assert_eq!(counter.count(), 2, "woken again once drained and waiting");
    }

    #[test]
    fn a_full_inbox_is_marked_lagged_and_wakes_its_task() {
        let (sender, mut inbox) = inbox(2);
        let counter = Arc::new(CountingWaker::default());
        let waker = Waker::from(counter.clone());
        let mut context = Context::from_waker(&waker);
        assert!(inbox.poll_lagged(&mut context).is_pending());
        sender.push(push(1));
        sender.push(push(2));
        assert!(!inbox.is_lagged());
        sender.push(push(3));
        assert!(inbox.is_lagged());
        assert_eq!(counter.count(), 2, "woken by the first push and by the lag");
        assert_eq!(inbox.poll_lagged(&mut context), Poll::Ready(Lagged));
        let mut batch = Vec::new();
        assert_eq!(inbox.poll_recv_many(&mut context, &mut batch, 8), Poll::Ready(Err(Lagged)));
        // What was queued before the lag can still be read (a shutdown drains it).
        assert_eq!(offset(&inbox.try_recv().unwrap()), 1);
        assert_eq!(offset(&inbox.try_recv().unwrap()), 2);
        assert!(inbox.try_recv().is_none());
    }

    #[test]
    fn a_drained_burst_lets_its_buffer_go() {
        let (sender, mut inbox) = inbox(1024);
        for offset in 1..=100 {
            sender.push(push(offset));
        }
        let waker = Waker::noop();
        let mut context = Context::from_waker(waker);
        let mut batch = Vec::new();
        assert_eq!(inbox.poll_recv_many(&mut context, &mut batch, 1024), Poll::Ready(Ok(100)));
        assert_eq!(inbox.0.lock().pushes.capacity(), 0);
    }

    #[tokio::test]
    async fn a_waiting_task_is_woken_by_a_push_from_another_thread() {
        let (sender, mut inbox) = inbox(16);
        let pusher = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            sender.push(push(7));
            sender
        });
        let mut batch = Vec::new();
        assert_eq!(inbox.recv_many(&mut batch, 16).await, Ok(1));
        assert_eq!(offset(&batch[0]), 7);
        let sender = pusher.join().unwrap();
        sender.mark_lagged();
        assert_eq!(inbox.lagged().await, Lagged);
    }
}
