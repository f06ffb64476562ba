//! The `authorization` header parser and verifier see raw client input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sofamq_broker::acl::sign;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(a) = sign::parse(s) {
            let _ = sign::verify("secret", b"20250101T000000Z", a.signature);
        }
    }
});
