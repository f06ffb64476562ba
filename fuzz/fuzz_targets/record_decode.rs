//! The commit-log record codec must reject, never panic on, any bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sofamq_store::record::decode_view(data, 1 << 20);
});
