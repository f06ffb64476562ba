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

/// Seconds since the Unix epoch of an `x-mq-date-time` value,
/// `yyyyMMdd'T'HHmmss'Z'` (UTC); `None` when it is not that format or not a real
/// date and time.
pub fn parse_date_time(v: &[u8]) -> Option<i64> {
    if v.len() != 16 || v[8] != b'T' || v[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = &v[r];
        if !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(s.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, s) = (num(9..11)?, num(11..13)?, num(13..15)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&mo) || d < 1 || d > month_days[(mo - 1) as usize] {
        return None;
    }
    if h > 23 || mi > 59 || s > 60 {
        return None;
    }
    // Days from civil (proleptic Gregorian), as in the SDK's formatter.
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + s)
}

/// Refuses a request whose `x-mq-date-time` is more than `max_skew` away from `now`
/// (the signature covers only that header, so this bounds how long a captured
/// request can be replayed). `max_skew` zero: no check.
pub fn check_clock_skew(
    date_time: &[u8],
    now: std::time::SystemTime,
    max_skew: std::time::Duration,
) -> Result<(), String> {
    if max_skew.is_zero() {
        return Ok(());
    }
    let shown = String::from_utf8_lossy(&date_time[..date_time.len().min(32)]).into_owned();
    let Some(t) = parse_date_time(date_time) else {
        return Err(format!(
            "x-mq-date-time {shown:?} is not in the yyyyMMdd'T'HHmmss'Z' (UTC) format"
        ));
    };
    let now = match now.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    };
    let skew = t.abs_diff(now);
    let max = max_skew.as_secs();
    if skew > max {
        return Err(format!(
            "x-mq-date-time {shown} is {skew} s {} the broker's clock, more than the {max} s \
             allowed (acl.max_clock_skew_ms): a replayed request or a wrong client clock",
            if t < now { "behind" } else { "ahead of" }
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_times_parse_like_the_sdk_formats_them() {
        use std::time::{Duration, UNIX_EPOCH};
        assert_eq!(parse_date_time(b"19700101T000000Z"), Some(0));
        assert_eq!(parse_date_time(b"20000229T120000Z"), Some(951_825_600));
        for secs in [
            0u64,
            951_825_600,
            1_700_000_000,
            4_102_444_799,
            1_234_567_890,
        ] {
            let t = UNIX_EPOCH + Duration::from_secs(secs);
            let s = sofamq_client::format_date_time(t);
            assert_eq!(parse_date_time(s.as_bytes()), Some(secs as i64), "{s}");
        }
        for bad in [
            &b""[..],
            b"20240101T000000",
            b"20240101 000000Z",
            b"2024010IT000000Z",
            b"20230229T000000Z",
            b"20241301T000000Z",
            b"20240100T000000Z",
            b"20240101T240000Z",
            b"20240101T006000Z",
            b"+2024101T000000Z",
        ] {
            assert_eq!(
                parse_date_time(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn clock_skew_beyond_the_limit_is_refused() {
        use std::time::{Duration, UNIX_EPOCH};
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let max = Duration::from_secs(15 * 60);
        let at =
            |secs: u64| sofamq_client::format_date_time(UNIX_EPOCH + Duration::from_secs(secs));
        assert!(check_clock_skew(at(1_700_000_000).as_bytes(), now, max).is_ok());
        assert!(check_clock_skew(at(1_700_000_000 - 900).as_bytes(), now, max).is_ok());
        assert!(check_clock_skew(at(1_700_000_000 + 900).as_bytes(), now, max).is_ok());
        let e = check_clock_skew(at(1_700_000_000 - 3600).as_bytes(), now, max).unwrap_err();
        assert!(e.contains("3600 s behind"), "{e}");
        let e = check_clock_skew(at(1_700_000_000 + 901).as_bytes(), now, max).unwrap_err();
        assert!(e.contains("901 s ahead of"), "{e}");
        let e = check_clock_skew(b"Mon, 01 Jan 2024", now, max).unwrap_err();
        assert!(e.contains("format"), "{e}");
        // Zero turns the check off.
        assert!(check_clock_skew(b"garbage", now, Duration::ZERO).is_ok());
        assert!(check_clock_skew(at(0).as_bytes(), now, Duration::ZERO).is_ok());
    }

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
