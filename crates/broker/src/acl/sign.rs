//! The RocketMQ 5 request signature: `authorization: MQv2-HMAC-SHA1
//! Credential=<AK>, SignedHeaders=x-mq-date-time, Signature=<hex>`, where the
//! signature is HMAC-SHA1(secret, raw bytes of the `x-mq-date-time` header).
//! Clients differ in date format and hex case, so the MAC is computed over the
//! header's raw bytes and the hex is decoded case-insensitively; the comparison
//! is constant-time (`Mac::verify_slice`).

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// The only algorithm the RocketMQ 5 clients use.
pub const ALGORITHM: &str = "MQv2-HMAC-SHA1";
/// Longest `authorization` header accepted.
pub const MAX_HEADER_LEN: usize = 1024;

/// The parts of an `authorization` header.
#[derive(Debug, PartialEq, Eq)]
pub struct Authorization<'a> {
    /// Access key (may be empty: the Python client sends `Credential=` without a key).
    pub access_key: &'a str,
    /// Header names covered by the signature.
    pub signed_headers: &'a str,
    /// Hex signature, any case.
    pub signature: &'a str,
}

/// Parses an `authorization` header; `None` when it is not a well-formed MQv2 header.
pub fn parse(header: &str) -> Option<Authorization<'_>> {
    if header.len() > MAX_HEADER_LEN {
        return None;
    }
    let rest = header.trim().strip_prefix(ALGORITHM)?;
    if !rest.starts_with(' ') {
        return None;
    }
    let (mut ak, mut sh, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k.trim() {
            "Credential" => ak = Some(v.trim()),
            "SignedHeaders" => sh = Some(v.trim()),
            "Signature" => sig = Some(v.trim()),
            _ => {}
        }
    }
    Some(Authorization {
        access_key: ak?,
        signed_headers: sh.unwrap_or("x-mq-date-time"),
        signature: sig?,
    })
}

/// HMAC-SHA1 of `data` under `secret`, lower-case hex (what clients send).
pub fn sign(secret: &str, data: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(data);
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `signature_hex` (any case) is the HMAC-SHA1 of `data` under `secret`,
/// compared in constant time.
pub fn verify(secret: &str, data: &[u8], signature_hex: &str) -> bool {
    let Ok(sig) = hex::decode(signature_hex.to_ascii_lowercase()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(data);
    mac.verify_slice(&sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_clients_send() {
        let h = "MQv2-HMAC-SHA1 Credential=ak1, SignedHeaders=x-mq-date-time, Signature=ABCDEF";
        assert_eq!(
            parse(h),
            Some(Authorization {
                access_key: "ak1",
                signed_headers: "x-mq-date-time",
                signature: "ABCDEF"
            })
        );
        // Python without credentials.
        let h = "MQv2-HMAC-SHA1 Credential=, SignedHeaders=x-mq-date-time, Signature=00";
        assert_eq!(parse(h).unwrap().access_key, "");
        assert!(parse("Basic abc").is_none());
        assert!(parse("MQv2-HMAC-SHA1Credential=a, Signature=b").is_none());
        assert!(parse("MQv2-HMAC-SHA1 SignedHeaders=x").is_none());
        assert!(parse(&"x".repeat(5000)).is_none());
    }

    #[test]
    fn verify_is_case_insensitive_and_rejects_tampering() {
        // RFC 2202 test case 2 for HMAC-SHA1.
        let sig = sign("Jefe", b"what do ya want for nothing?");
        assert_eq!(sig, "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
        assert!(verify("Jefe", b"what do ya want for nothing?", &sig));
        assert!(verify(
            "Jefe",
            b"what do ya want for nothing?",
            &sig.to_uppercase()
        ));
        assert!(!verify("Jefe", b"what do ya want for nothing!", &sig));
        assert!(!verify("jefe", b"what do ya want for nothing?", &sig));
        let mut bad = sig.clone();
        bad.replace_range(0..1, "f");
        assert!(!verify("Jefe", b"what do ya want for nothing?", &bad));
        assert!(!verify("Jefe", b"what do ya want for nothing?", "zz"));
        assert!(!verify("Jefe", b"what do ya want for nothing?", ""));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics_and_round_trips(
            junk in ".{0,2000}",
            ak in "[A-Za-z0-9_-]{1,40}",
            secret in ".{1,64}",
            date in "[0-9TZ]{0,32}",
        ) {
            let _ = parse(&junk);
            let sig = sign(&secret, date.as_bytes());
            let header = format!("{ALGORITHM} Credential={ak}, SignedHeaders=x-mq-date-time, Signature={sig}");
            let a = parse(&header).unwrap();
            proptest::prop_assert_eq!(a.access_key, ak.as_str());
            proptest::prop_assert!(verify(&secret, date.as_bytes(), a.signature));
            let other = format!("{date}x");
            proptest::prop_assert!(!verify(&secret, other.as_bytes(), a.signature));
        }

        #[test]
        fn rules_parse_or_fail_without_panicking(s in ".{0,300}") {
            if let Ok(r) = crate::acl::Rule::parse(&s) {
                proptest::prop_assert_eq!(crate::acl::Rule::parse(&r.to_string()).unwrap(), r);
            }
        }
    }
}
