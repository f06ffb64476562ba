//! Replication frames arrive from the network: the decoder must return a
//! frame, "need more" or an error, never panic or over-allocate.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_frame)) = sofamq_broker::repl::frame::decode(&mut buf, 1 << 20) {}
});
