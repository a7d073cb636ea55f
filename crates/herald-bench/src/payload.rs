//! What each published message carries (`{"c":channel,"s":seq,"t":micros,"p":"xx.."}`) and what
//! each subscriber keeps: a seen-bitset per its channel's sequence, order, latency.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

pub fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_micros() as u64)
}

/// The JSON data of message `seq` (counted per channel) on channel index `channel`, padded to
/// about `size` bytes: with `x`s, or (`json_like`) with a list of feed items, which compresses
/// about as real JSON does rather than to almost nothing.
pub fn message(channel: usize, seq: u64, size: usize, json_like: bool) -> String {
    let head = format!("{{\"c\":{channel},\"s\":{seq},\"t\":{},\"p\":", now_micros());
    let mut text = String::with_capacity(size + 64);
    text.push_str(&head);
    if json_like {
        text.push('[');
        let mut state = seq.wrapping_mul(6364136223846793005).wrapping_add(channel as u64 | 1);
        while text.len() + 2 < size {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let (id, price, stock) = (state >> 40, (state >> 20) % 100_000, (state >> 8) % 500);
            text.push_str(&format!(
                "{{\"id\":{id},\"name\":\"item {id}\",\"price\":{}.{:02},\"stock\":{stock}}},",
                price / 100,
                price % 100
            ));
        }
        if text.ends_with(',') {
            text.pop();
        }
        text.push_str("]}");
    } else {
        let pad = size.saturating_sub(head.len() + 3);
        text.push('"');
        text.extend(std::iter::repeat_n('x', pad));
        text.push_str("\"}");
    }
    text
}

/// Finds `"key":<digits>` in any framing (a Herald publication, a NATS `MSG`, a Socket.IO
/// event) without parsing the whole message.
fn field(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = text.windows(key.len()).position(|window| window == key)? + key.len();
    let digits = text[at..].iter().take_while(|byte| byte.is_ascii_digit()).count();
    std::str::from_utf8(&text[at..at + digits]).ok()?.parse().ok()
}

/// `(seq, sent_micros)` of every message found in `text` (a poll answer holds several).
pub fn messages_in(text: &[u8]) -> Vec<(u64, u64)> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.windows(4).position(|window| window == b"\"s\":") {
        let (Some(seq), Some(sent)) = (field(&rest[at..], b"\"s\":"), field(&rest[at..], b"\"t\":")) else {
            break;
        };
        found.push((seq, sent));
        rest = &rest[at + 4..];
    }
    found
}

/// Latencies of every delivery, in microseconds, shared by all subscribers of a run.
pub type Latencies = Arc<Mutex<Histogram<u64>>>;

pub fn latencies() -> Latencies {
    Arc::new(Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")))
}

/// What one subscriber saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    bits: Vec<u64>,
    last: Option<u64>,
    pub delivered: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
}

impl Seen {
    pub fn record(&mut self, seq: u64, sent_micros: u64, latencies: &Latencies) {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if self.bits.len() <= word {
            self.bits.resize(word + 1, 0);
        }
        if self.bits[word] & (1 << bit) != 0 {
            self.duplicated += 1;
            return;
        }
        self.bits[word] |= 1 << bit;
        self.delivered += 1;
        if self.last.is_some_and(|last| seq < last) {
            self.out_of_order += 1;
        }
        self.last = Some(self.last.map_or(seq, |last| last.max(seq)));
        let latency = now_micros().saturating_sub(sent_micros).max(1);
        if let Ok(mut histogram) = latencies.lock() {
            let _ = histogram.record(latency);
        }
    }

    pub fn record_all(&mut self, text: &[u8], latencies: &Latencies) {
        for (seq, sent) in messages_in(text) {
            self.record(seq, sent, latencies);
        }
    }

    /// Of `expected` messages (sequences `0..expected`), how many never arrived.
    pub fn lost(&self, expected: u64) -> u64 {
        expected.saturating_sub(self.delivered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sequence_and_time_in_any_framing() {
        let data = message(3, 42, 100, false);
        assert!((95..=105).contains(&data.len()), "{}", data.len());
        let publication = format!("{{\"channel\":\"b:3\",\"offset\":43,\"epoch\":\"e\",\"data\":{data},\"time\":1}}");
        let found = messages_in(publication.as_bytes());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, 42);
        let poll = format!("{{\"messages\":[{publication},{publication}],\"cursor\":\"x\"}}");
        assert_eq!(messages_in(poll.as_bytes()).len(), 2);
        assert_eq!(messages_in(b"MSG bench.1 1 12\r\n{\"s\":7,\"t\":9}\r\n"), [(7, 9)]);
    }

    #[test]
    fn counts_duplicates_order_and_loss() {
        let latencies = latencies();
        let mut seen = Seen::default();
        for seq in [0, 1, 3, 2, 3, 5] {
            seen.record(seq, now_micros(), &latencies);
        }
        assert_eq!((seen.delivered, seen.duplicated, seen.out_of_order), (5, 1, 1));
        assert_eq!(seen.lost(7), 2);
    }
}
