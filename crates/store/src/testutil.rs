//! Deterministic record contents shared by the crash-test child and the tests.

use bytes::Bytes;

use crate::record::{NewRecord, Record};

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// Queue id used by writer `w` of the crash test.
pub fn crash_queue(w: u32) -> u32 {
    w % 3
}

/// The record writer `w` appends as its `seq`-th record in round `round`.
pub fn crash_record(round: u64, w: u32, seq: u64) -> NewRecord {
    let seed = mix(round.wrapping_mul(1_000_003) ^ (u64::from(w) << 40) ^ seq);
    let len = 1 + (seed % 1500) as usize;
    let mut body = Vec::with_capacity(len);
    let mut s = seed;
    while body.len() < len {
        s = mix(s.wrapping_add(0x9e37_79b9_7f4a_7c15));
        body.extend_from_slice(&s.to_le_bytes());
    }
    body.truncate(len);
    NewRecord {
        topic: "crash".into(),
        queue_id: crash_queue(w),
        flags: (seed >> 40) as u32,
        tag: format!("r{round}"),
        born_ts_ms: seed as i64 >> 8,
        properties: vec![
            ("r".into(), round.to_string()),
            ("w".into(), w.to_string()),
            ("s".into(), seq.to_string()),
        ],
        body: Bytes::from(body),
    }
}

/// Whether `got` carries exactly the content of `want`.
pub fn same_content(got: &Record, want: &NewRecord) -> bool {
    got.topic == want.topic
        && got.queue_id == want.queue_id
        && got.flags == want.flags
        && got.tag == want.tag
        && got.born_ts_ms == want.born_ts_ms
        && got.properties == want.properties
        && got.body == want.body
}
