//! Receipt handles come back from clients: decoding must refuse forgeries
//! and garbage without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = sofamq_broker::consume::receipt::decode(&[7u8; 32], "group", "topic", s);
    }
});
