//! permessage-deflate (RFC 7692): the handshake's negotiation, and messages compressed and
//! decompressed.
//!
//! Herald always answers with `server_no_context_takeover` and `client_no_context_takeover`:
//! every message is compressed on its own, so a connection keeps no compressor or window
//! between messages (idle connections stay small), and a publication compressed once serves
//! every connection that negotiated the default window, as its plain frame does. A client
//! that limits the server's window (`server_max_window_bits` < 15) gets its own compression.
//! The compressors themselves are per thread and reset for each message.

use std::cell::RefCell;

use axum::http::{HeaderMap, HeaderValue, header};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// What was agreed with one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deflate {
    /// The server's LZ77 window, 2^bits bytes (9..=15; 15 unless the client asked for less).
    pub server_window_bits: u8,
    /// Whether the client named the window (then the answer names it too, RFC 7692 7.1.2.1).
    pub window_named: bool,
}

/// The largest window, which a shared compression of a publication uses.
pub const DEFAULT_WINDOW_BITS: u8 = 15;

/// The tail every sync flush ends with, left off on the wire (RFC 7692 7.2.1).
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Why a compressed message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates past the message size limit.
    TooBig,
    /// It is not deflate data.
    Invalid,
}

/// The first `permessage-deflate` offer of the request Herald can accept, and the response
/// header accepting it; `None` when there is none (the connection goes uncompressed).
pub fn negotiate(headers: &HeaderMap) -> Option<(Deflate, HeaderValue)> {
    let offers = headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','));
    for offer in offers {
        if let Some(deflate) = accept_offer(offer) {
            let mut response =
                String::from("permessage-deflate; server_no_context_takeover; client_no_context_takeover");
            if deflate.window_named {
                response.push_str(&format!("; server_max_window_bits={}", deflate.server_window_bits));
            }
            return Some((deflate, HeaderValue::from_str(&response).ok()?));
        }
    }
    None
}

/// One offer, `permessage-deflate; param[=value]; …`, if Herald can accept it: every
/// parameter known, none twice, each value valid (RFC 7692 7.1).
fn accept_offer(offer: &str) -> Option<Deflate> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen: Vec<String> = Vec::new();
    let mut deflate = Deflate { server_window_bits: DEFAULT_WINDOW_BITS, window_named: false };
    for part in parts {
        let (name, value) = match part.split_once('=') {
            Some((name, value)) => (name.trim().to_ascii_lowercase(), Some(value.trim().trim_matches('"'))),
            None => (part.to_ascii_lowercase(), None),
        };
        if seen.contains(&name) {
            return None;
        }
        match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            // Herald's decompressor takes any window up to 15: no need to answer this one.
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(bits)) => {
                window_bits(bits)?;
            }
            ("server_max_window_bits", Some(bits)) => {
                // zlib's raw deflate has no 256-byte window: an offer that needs one is declined.
                deflate.server_window_bits = window_bits(bits).filter(|bits| *bits >= 9)?;
                deflate.window_named = true;
            }
            _ => return None,
        }
        seen.push(name);
    }
    Some(deflate)
}

/// A window size parameter: 8 to 15, written without a sign or leading zero.
fn window_bits(text: &str) -> Option<u8> {
    if text.is_empty() || text.starts_with('0') || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse::<u8>().ok().filter(|bits| (8..=15).contains(bits))
}

thread_local! {
    /// This thread's compressors, by window size (mostly just the default one).
    static COMPRESSORS: RefCell<Vec<(u8, Compress)>> = const { RefCell::new(Vec::new()) };
    static DECOMPRESSOR: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// One message compressed on its own (no context kept), without the sync flush's tail.
pub fn compress(payload: &[u8], window_bits: u8) -> Vec<u8> {
    COMPRESSORS.with_borrow_mut(|compressors| {
        let index = match compressors.iter().position(|(bits, _)| *bits == window_bits) {
            Some(index) => index,
            None => {
                let compressor = Compress::new_with_window_bits(Compression::default(), false, window_bits);
                compressors.push((window_bits, compressor));
                compressors.len() - 1
            }
        };
        let compressor = &mut compressors[index].1;
        compressor.reset();
        // Deflate's worst case is a little over the input; the sync flush adds a few bytes.
        let mut out = Vec::with_capacity(payload.len() + payload.len() / 100 + 64);
        let mut input = payload;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity());
            }
            let before = compressor.total_in();
            if compressor.compress_vec(input, &mut out, FlushCompress::Sync).is_err() {
                // Not expected of a fresh stream; the message then goes plain.
                return payload.to_vec();
            }
            input = &input[(compressor.total_in() - before) as usize..];
            // Room left over: the flush is complete.
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        if out.ends_with(&SYNC_TAIL) {
            out.truncate(out.len() - SYNC_TAIL.len());
        }
        out
    })
}

/// A compressed message's payload decompressed, failing once it would exceed `limit` bytes
/// (a small message that inflates past the limit is as big as its result).
pub fn decompress(payload: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    DECOMPRESSOR.with_borrow_mut(|slot| {
        let decompressor = slot.get_or_insert_with(|| Decompress::new(false));
        // No context is kept between messages (client_no_context_takeover).
        decompressor.reset(false);
        let mut out: Vec<u8> = Vec::with_capacity(payload.len().saturating_mul(3).max(64).min(limit.saturating_add(1)));
        for (chunk, last) in [(payload, false), (&SYNC_TAIL[..], true)] {
            let mut input = chunk;
            loop {
                if out.len() == out.capacity() {
                    out.reserve(out.len().clamp(64, limit.saturating_add(1).saturating_sub(out.len()).max(64)));
                }
                let (before_in, before_out) = (decompressor.total_in(), decompressor.total_out());
                let status = decompressor
                    .decompress_vec(input, &mut out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Invalid)?;
                input = &input[(decompressor.total_in() - before_in) as usize..];
                if out.len() > limit {
                    return Err(InflateError::TooBig);
                }
                if status == Status::StreamEnd {
                    // A final block: nothing may follow it but the tail added here.
                    return if input.is_empty() || last { Ok(out) } else { Err(InflateError::Invalid) };
                }
                if input.is_empty() && out.len() < out.capacity() {
                    break;
                }
                let progressed = decompressor.total_in() != before_in || decompressor.total_out() != before_out;
                if !progressed && out.len() < out.capacity() {
                    return Err(InflateError::Invalid);
                }
            }
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(value: &str) -> Option<(Deflate, String)> {
        let mut headers = HeaderMap::new();
        headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_str(value).unwrap());
        negotiate(&headers).map(|(deflate, response)| (deflate, response.to_str().unwrap().to_string()))
    }

    #[test]
    fn offers_are_accepted_or_declined_as_rfc_7692_says() {
        let plain = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
        let default = Deflate { server_window_bits: 15, window_named: false };
        assert_eq!(offer("permessage-deflate"), Some((default, plain.into())));
        // What Chrome and Firefox send.
        assert_eq!(offer("permessage-deflate; client_max_window_bits").unwrap().1, plain);
        let limited = offer("permessage-deflate; server_max_window_bits=10").unwrap();
        let ten = Deflate { server_window_bits: 10, window_named: true };
        assert_eq!(limited, (ten, format!("{plain}; server_max_window_bits=10")));
        // Named, even at the default: the answer names it back.
        let fifteen = offer("permessage-deflate; server_max_window_bits=15").unwrap();
        assert_eq!(fifteen.1, format!("{plain}; server_max_window_bits=15"));
        for declined in [
            "x-webkit-deflate-frame",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; mystery",
        ] {
            assert_eq!(offer(declined), None, "{declined}");
        }
        // The first acceptable offer of several wins.
        let second =
            offer("permessage-deflate; server_max_window_bits=8, permessage-deflate; client_max_window_bits=12");
        assert_eq!(second.unwrap().0, default);
    }

    #[test]
    fn what_is_compressed_decompresses_to_the_same_bytes_for_every_window() {
        let text: Vec<u8> =
            (0..5000).flat_map(|n: u32| format!("{{\"n\":{n},\"text\":\"hello\"}}").into_bytes()).collect();
        for bits in 9..=15 {
            let compressed = compress(&text, bits);
            assert!(compressed.len() < text.len() / 4, "{bits}: {} bytes", compressed.len());
            assert_eq!(decompress(&compressed, text.len()).unwrap(), text, "{bits}");
            // Each message on its own: the same input gives the same bytes.
            assert_eq!(compress(&text, bits), compressed);
        }
        assert_eq!(decompress(&compress(b"", 15), 10).unwrap(), b"");
    }

    #[test]
    fn a_bomb_past_the_limit_and_garbage_are_refused() {
        let zeros = vec![0u8; 1 << 20];
        let compressed = compress(&zeros, 15);
        assert!(compressed.len() < 2048, "{}", compressed.len());
        assert_eq!(decompress(&compressed, 65536), Err(InflateError::TooBig));
        assert_eq!(decompress(&compressed, 1 << 20).unwrap().len(), 1 << 20);
        assert_eq!(decompress(&[0xff, 0xff, 0xff, 0xff, 0xff], 65536), Err(InflateError::Invalid));
    }
}
