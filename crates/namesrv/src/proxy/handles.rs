//! Handles that pass through the proxy and the broker group each one belongs to.
//!
//! * Receipt handles are issued by a broker and do not name its group, so the proxy wraps
//!   them on the way out as `P1` + two hex digits of the group name's length + the name +
//!   the broker's handle, and unwraps them on the way in (ack, change invisible duration,
//!   dead-lettering). A broker's own handles are lowercase hex, so they never start with `P`.
//! * Recall handles and transaction ids are hex of newline-separated fields whose second is
//!   the group (`r1` / `x1` first); they are passed unchanged.

const PREFIX: &str = "P1";

/// `handle` wrapped with the `group` that issued it.
pub fn wrap(group: &str, handle: &str) -> String {
    if group.is_empty() || group.len() > 255 {
        return handle.to_string();
    }
    format!("{PREFIX}{:02x}{group}{handle}", group.len())
}

/// The group and the broker's own handle of a wrapped handle; `(None, handle)` for one that
/// is not wrapped.
pub fn unwrap(handle: &str) -> (Option<&str>, &str) {
    let Some(rest) = handle.strip_prefix(PREFIX) else {
        return (None, handle);
    };
    let Some(len) = rest
        .get(..2)
        .and_then(|h| usize::from_str_radix(h, 16).ok())
    else {
        return (None, handle);
    };
    match (rest.get(2..2 + len), rest.get(2 + len..)) {
        (Some(group), Some(inner)) if len > 0 => (Some(group), inner),
        _ => (None, handle),
    }
}

/// The broker group named by a recall handle (`tag` `r1`) or a transaction id (`x1`).
pub fn group_of(handle: &str, tag: &str) -> Option<String> {
    if handle.len() > 4096 || !handle.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..handle.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(handle.get(i..i + 2)?, 16).ok())
        .collect();
    let text = String::from_utf8(bytes?).ok()?;
    let mut parts = text.split('\n');
    if parts.next() != Some(tag) {
        return None;
    }
    parts.next().filter(|g| !g.is_empty()).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_round_trips_and_leaves_foreign_handles_alone() {
        let w = wrap("broker-a", "0aff12");
        assert!(w.starts_with("P108broker-a"));
        assert_eq!(unwrap(&w), (Some("broker-a"), "0aff12"));
        assert_eq!(unwrap("0aff12"), (None, "0aff12"));
        // Malformed wrappers are taken as foreign handles, never panic.
        for bad in ["P1", "P1zz", "P1ffab", "P100abc", "P1"] {
            assert_eq!(unwrap(bad), (None, bad));
        }
        assert_eq!(wrap("", "h"), "h");
    }

    #[test]
    fn group_of_reads_recall_handles_and_transaction_ids() {
        let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(
            group_of(&hex("r1\nbroker-b\nt\n1\n2\nid"), "r1").as_deref(),
            Some("broker-b")
        );
        assert_eq!(
            group_of(&hex("x1\nbroker-c\n7\nid"), "x1").as_deref(),
            Some("broker-c")
        );
        assert_eq!(group_of(&hex("x1\nbroker-c\n7\nid"), "r1"), None);
        assert_eq!(group_of("zz", "r1"), None);
        assert_eq!(group_of("abc", "r1"), None);
    }
}
