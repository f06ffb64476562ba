//! Fields of consumer requests as every consume handler reads them: absent
//! resources as empty names, absent or negative durations as none or zero.

use sofamq_proto::v2::Resource;

/// A protobuf duration in whole milliseconds; negative parts count as zero.
pub(crate) fn duration_ms(d: Option<&prost_types::Duration>) -> Option<u64> {
    d.map(|d| {
        let s = u64::try_from(d.seconds).unwrap_or(0);
        let n = u64::try_from(d.nanos).unwrap_or(0);
        s.saturating_mul(1000).saturating_add(n / 1_000_000)
    })
}

/// The name of a request's resource, empty when the request has none.
pub(crate) fn resource_name(r: Option<&Resource>) -> &str {
    r.map(|r| r.name.as_str()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_whole_milliseconds_and_negative_parts_count_as_zero() {
        let d = |seconds, nanos| prost_types::Duration { seconds, nanos };
        assert_eq!(duration_ms(None), None);
        assert_eq!(duration_ms(Some(&d(2, 345_999_999))), Some(2345));
        assert_eq!(duration_ms(Some(&d(-5, 7_000_000))), Some(7));
        assert_eq!(duration_ms(Some(&d(i64::MAX, 0))), Some(u64::MAX));
    }

    #[test]
    fn a_missing_resource_has_the_empty_name() {
        let r = Resource {
            name: "orders".into(),
            ..Default::default()
        };
        assert_eq!(resource_name(Some(&r)), "orders");
        assert_eq!(resource_name(None), "");
    }
}
