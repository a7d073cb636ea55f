//! What one subscription has seen: the position it reached in each of its channels, which
//! decides whether a publication is the next one to deliver (what an SSE id or a poll cursor
//! encodes).

use crate::channel::ChannelName;
use crate::position::Position;
use crate::publication::Publication;

/// The positions one subscription has reached, per channel; decides which publications are new.
///
/// Live publications can arrive twice around a recovery (once from history, once live) and,
/// with remote engines, late. The tracker passes each publication once, in offset order.
///
/// A sorted vector rather than a map: most connections follow one channel or a few, and an
/// idle connection's tracker then costs one small allocation (a map's smallest is four buckets
/// and their control bytes); lookups are a binary search.
#[derive(Debug, Default, Clone)]
pub struct PositionTracker {
    positions: Vec<(ChannelName, Position)>,
}

impl PositionTracker {
    fn find(&self, channel: &ChannelName) -> Result<usize, usize> {
        self.positions.binary_search_by(|(tracked, _)| tracked.cmp(channel))
    }

    /// Starts (or restarts) tracking `channel` at `position`.
    pub fn track(&mut self, channel: ChannelName, position: Position) {
        match self.find(&channel) {
            Ok(index) => self.positions[index].1 = position,
            Err(index) => {
                // Grows 1, 2, 4, …: a vector's own growth starts at four entries.
                if self.positions.len() == self.positions.capacity() {
                    self.positions.reserve_exact(self.positions.len().max(1));
                }
                self.positions.insert(index, (channel, position));
            }
        }
    }

    pub fn forget(&mut self, channel: &ChannelName) -> Option<Position> {
        let index = self.find(channel).ok()?;
        let (_, position) = self.positions.remove(index);
        if self.positions.is_empty() {
            // A connection that left all its channels holds nothing.
            self.positions = Vec::new();
        }
        Some(position)
    }

    pub fn get(&self, channel: &ChannelName) -> Option<&Position> {
        self.find(channel).ok().map(|index| &self.positions[index].1)
    }

    fn get_mut(&mut self, channel: &ChannelName) -> Option<&mut Position> {
        self.find(channel).ok().map(|index| &mut self.positions[index].1)
    }

    pub fn is_tracked(&self, channel: &ChannelName) -> bool {
        self.find(channel).is_ok()
    }

    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// The tracked channels and their positions, in channel-name order.
    pub fn iter(&self) -> impl Iterator<Item = (&ChannelName, &Position)> {
        self.positions.iter().map(|(channel, position)| (channel, position))
    }

    /// Whether `publication` is the next thing to deliver on its channel; if so the position
    /// moves to it. Publications of untracked channels, already passed offsets or another epoch
    /// are refused.
    pub fn advance(&mut self, publication: &Publication) -> bool {
        let Some(position) = self.get_mut(&publication.channel) else {
            return false;
        };
        if position.epoch != publication.position.epoch || publication.position.offset <= position.offset {
            return false;
        }
        position.offset = publication.position.offset;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::Epoch;
    use crate::publication::Payload;

    fn publication(channel: &str, epoch: &Epoch, offset: u64) -> Publication {
        Publication::new(
            ChannelName::new(channel).unwrap(),
            Position { epoch: epoch.clone(), offset },
            Payload::from_static(b"1"),
            0,
        )
    }

    #[test]
    fn advances_once_per_offset_and_only_forward() {
        let epoch = Epoch::new("e1");
        let channel = ChannelName::new("a").unwrap();
        let mut tracker = PositionTracker::default();
        tracker.track(channel.clone(), Position { epoch: epoch.clone(), offset: 2 });
        assert!(!tracker.advance(&publication("a", &epoch, 1)));
        assert!(!tracker.advance(&publication("a", &epoch, 2)));
        assert!(tracker.advance(&publication("a", &epoch, 3)));
        assert!(!tracker.advance(&publication("a", &epoch, 3)));
        assert!(tracker.advance(&publication("a", &epoch, 4)));
        assert_eq!(tracker.get(&channel).unwrap().offset, 4);
    }

    #[test]
    fn refuses_other_epochs_and_untracked_channels() {
        let epoch = Epoch::new("e1");
        let mut tracker = PositionTracker::default();
        tracker.track(ChannelName::new("a").unwrap(), Position { epoch: epoch.clone(), offset: 0 });
        assert!(!tracker.advance(&publication("a", &Epoch::new("e2"), 1)));
        assert!(!tracker.advance(&publication("b", &epoch, 1)));
    }
}
