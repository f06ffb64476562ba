//! Receipt handles: opaque, tamper-evident tokens naming one delivery.
//!
//! `hex(v2 | epoch u64 | queue u32 | offset u64 | generation u64 | mac[16])` where `mac` is
//! HMAC-MD5 over the group, topic and the fields, keyed with the broker
//! group's secret. The secret is a record in the consumer log, so it
//! survives restarts and replicates to the slave (handles stay valid after a
//! master switch). A handle is valid only while `generation` is the message's
//! current receipt generation: acks, nacks and redeliveries make it stale. `epoch` is the
//! master epoch that issued it: a handle from a later epoch is never ours, and under a
//! controller a handle from an earlier epoch (issued before a failover, whose state may not
//! have reached this master) is refused too: the message is delivered again instead.

use md5::{Digest, Md5};

const VERSION: u8 = 2;
const FIELDS: usize = 1 + 8 + 4 + 8 + 8;
const MAC: usize = 16;

/// What a receipt handle names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// Master epoch that issued the handle.
    pub epoch: u64,
    /// Queue id.
    pub queue: u32,
    /// Queue offset.
    pub offset: u64,
    /// Receipt generation.
    pub generation: u64,
}

fn hmac_md5(key: &[u8; 32], parts: &[&[u8]]) -> [u8; MAC] {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(key);
    let mut inner = Md5::new();
    inner.update(k.map(|b| b ^ 0x36));
    for p in parts {
        inner.update((p.len() as u32).to_le_bytes());
        inner.update(p);
    }
    let mut outer = Md5::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Encodes a handle for `group`/`topic`.
pub fn encode(secret: &[u8; 32], group: &str, topic: &str, r: Receipt) -> String {
    let mut b = Vec::with_capacity(FIELDS + MAC);
    b.push(VERSION);
    b.extend_from_slice(&r.epoch.to_le_bytes());
    b.extend_from_slice(&r.queue.to_le_bytes());
    b.extend_from_slice(&r.offset.to_le_bytes());
    b.extend_from_slice(&r.generation.to_le_bytes());
    let mac = hmac_md5(secret, &[group.as_bytes(), topic.as_bytes(), &b]);
    b.extend_from_slice(&mac);
    hex::encode(b)
}

impl Receipt {
    /// Checks the issuing epoch against the broker's `current` one: never from the future;
    /// with `strict` (a controller decides masters), only from this epoch.
    pub fn check_epoch(&self, current: u64, strict: bool) -> Result<(), String> {
        if self.epoch > current || (strict && self.epoch != current) {
            return Err(format!(
                "receipt handle from master epoch {} but the broker group is at epoch {current} \
                 (a failover happened): the message will be delivered again",
                self.epoch
            ));
        }
        Ok(())
    }
}

/// Decodes and verifies a handle; `Err` says why it is not one of ours.
pub fn decode(secret: &[u8; 32], group: &str, topic: &str, s: &str) -> Result<Receipt, String> {
    if s.len() != 2 * (FIELDS + MAC) {
        return Err("receipt handle has the wrong length".into());
    }
    let b = hex::decode(s).map_err(|_| "receipt handle is not hex".to_string())?;
    let (fields, mac) = b.split_at(FIELDS);
    if fields[0] != VERSION {
        return Err("unknown receipt handle version".into());
    }
    let want = hmac_md5(secret, &[group.as_bytes(), topic.as_bytes(), fields]);
    // Constant-time comparison.
    if want.iter().zip(mac).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0 {
        return Err("receipt handle does not verify (tampered, or another group or topic)".into());
    }
    let u32_at =
        |i: usize| u32::from_le_bytes([fields[i], fields[i + 1], fields[i + 2], fields[i + 3]]);
    let u64_at = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&fields[i..i + 8]);
        u64::from_le_bytes(a)
    };
    Ok(Receipt {
        epoch: u64_at(1),
        queue: u32_at(9),
        offset: u64_at(13),
        generation: u64_at(21),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let k = [3u8; 32];
        let r = Receipt {
            epoch: 3,
            queue: 7,
            offset: 1 << 40,
            generation: 99,
        };
        let h = encode(&k, "g", "t", r);
        assert_eq!(decode(&k, "g", "t", &h).unwrap(), r);
        assert!(decode(&k, "g2", "t", &h).is_err());
        assert!(decode(&k, "g", "t2", &h).is_err());
        assert!(decode(&[4u8; 32], "g", "t", &h).is_err());
        let mut t = h.clone().into_bytes();
        t[5] = if t[5] == b'0' { b'1' } else { b'0' };
        assert!(decode(&k, "g", "t", std::str::from_utf8(&t).unwrap()).is_err());
        assert!(decode(&k, "g", "t", "zz").is_err());
        assert!(decode(&k, "g", "t", &"é".repeat(45)).is_err());
    }

    proptest::proptest! {
        /// Any string decodes to an error or a receipt, never a panic; random bytes of the
        /// right length never verify.
        #[test]
        fn arbitrary_input_never_panics(s in ".{0,120}", raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 45)) {
            let k = [9u8; 32];
            let _ = decode(&k, "g", "t", &s);
            let h = hex::encode(&raw);
            proptest::prop_assert!(decode(&k, "g", "t", &h).is_err());
        }
    }

    #[test]
    fn epoch_rules() {
        let r = Receipt {
            epoch: 5,
            queue: 0,
            offset: 0,
            generation: 1,
        };
        assert!(r.check_epoch(5, true).is_ok());
        assert!(r.check_epoch(6, false).is_ok());
        assert!(r.check_epoch(6, true).is_err(), "issued before a failover");
        assert!(r.check_epoch(4, false).is_err(), "from the future");
    }
}
