//! The publication as the hub hands it around: one allocation shared by every subscriber, with a
//! slot for its encoded form so it is serialized once, not once per subscriber.

use std::any::Any;
use std::sync::OnceLock;

use bytes::Bytes;

use crate::channel::ChannelName;
use crate::position::Position;

/// The published data, opaque to the core (the server keeps JSON text in it).
pub type Payload = Bytes;

/// One publication in one channel.
pub struct Publication {
    pub channel: ChannelName,
    pub position: Position,
    pub data: Payload,
    /// Milliseconds since the Unix epoch when the engine accepted it.
    pub time_ms: u64,
    /// The edge's encoded form, made by whichever subscriber needs it first.
    encoded: EncodedSlot,
}

impl Publication {
    pub fn new(channel: ChannelName, position: Position, data: Payload, time_ms: u64) -> Self {
        Self { channel, position, data, time_ms, encoded: EncodedSlot::default() }
    }

    /// The encoded form of this publication, made by `encode` on first use and shared after.
    pub fn encoded<T>(&self, encode: impl FnOnce(&Publication) -> T) -> T
    where
        T: Any + Clone + Send + Sync,
    {
        self.encoded.get_or_encode(|| encode(self))
    }
}

/// A slot for the encoded forms of something pushed to many subscribers, each filled by the
/// first one that needs it.
///
/// The core does not know wire formats; the server picks a type `T` per door (Herald's own
/// protocol, the Pusher door) holding all the forms that door needs. Up to [`ENCODED_FORMS`]
/// types are kept; another one is encoded afresh each time (slower, still right).
#[derive(Default)]
pub struct EncodedSlot([OnceLock<Box<dyn Any + Send + Sync>>; ENCODED_FORMS]);

/// How many encoded forms one publication keeps: one per door of the server, and Herald's
/// WebSocket frame compressed.
pub const ENCODED_FORMS: usize = 3;

impl EncodedSlot {
    pub fn get_or_encode<T>(&self, encode: impl FnOnce() -> T) -> T
    where
        T: Any + Clone + Send + Sync,
    {
        let mut encode = Some(encode);
        for form in &self.0 {
            let cached = form.get_or_init(|| {
                let encode = encode.take().expect("get_or_init runs its closure at most once");
                Box::new(encode())
            });
            if let Some(value) = cached.downcast_ref::<T>() {
                return value.clone();
            }
            // Another type holds this form: our closure did not run, and the next form is tried.
        }
        (encode.expect("a closure that ran cached its value above"))()
    }
}

impl std::fmt::Debug for Publication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publication")
            .field("channel", &self.channel)
            .field("position", &self.position)
            .field("data", &self.data)
            .field("time_ms", &self.time_ms)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::Epoch;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn encodes_once() {
        let publication = Publication::new(
            ChannelName::new("a").unwrap(),
            Position { epoch: Epoch::new("e"), offset: 1 },
            Payload::from_static(b"{}"),
            5,
        );
        let calls = AtomicUsize::new(0);
        for _ in 0..3 {
            let encoded = publication.encoded(|p| {
                calls.fetch_add(1, Ordering::SeqCst);
                Bytes::from(format!("{}@{}", p.channel, p.position.offset))
            });
            assert_eq!(encoded, Bytes::from_static(b"a@1"));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn keeps_one_form_per_type_up_to_its_capacity() {
        let slot = EncodedSlot::default();
        let calls = AtomicUsize::new(0);
        let count = || calls.fetch_add(1, Ordering::SeqCst);
        for _ in 0..2 {
            assert_eq!(slot.get_or_encode(|| (count(), Bytes::from_static(b"herald")).1), "herald");
            assert_eq!(slot.get_or_encode(|| (count(), String::from("pusher")).1), "pusher");
            assert_eq!(slot.get_or_encode(|| (count(), 3u8).1), 3);
        }
        assert_eq!(calls.load(Ordering::SeqCst), ENCODED_FORMS, "each form encoded once");
        // One type more than there are forms has none of its own: encoded each time, still right.
        assert_eq!(slot.get_or_encode(|| (count(), 7u32).1), 7);
        assert_eq!(slot.get_or_encode(|| (count(), 7u32).1), 7);
        assert_eq!(calls.load(Ordering::SeqCst), ENCODED_FORMS + 2);
    }
}
