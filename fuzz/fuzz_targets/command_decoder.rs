//! Fuzzes the WebSocket command decoder: any bytes, as a text frame, must decode or give an
//! error with a code, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Err((_, error)) = herald_wire::command::decode(text)
    {
        assert!(!error.code.is_empty());
    }
});
