//! gRPC metadata sent with every request (`x-mq-*` headers).

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use tonic::Request;
use tonic::metadata::AsciiMetadataValue;

use crate::error::ClientError;
use crate::id::MessageIdGenerator;

/// SDK version sent as `x-mq-client-version`.
pub const CLIENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Pre-validated header values shared by all requests of a producer.
#[derive(Debug)]
pub(crate) struct RequestHeaders {
    client_id: AsciiMetadataValue,
    version: AsciiMetadataValue,
    request_ids: MessageIdGenerator,
    credentials: Option<crate::auth::Credentials>,
    /// The date header and signature of the current second: both depend on
    /// the second only, so they are made once per second, not per request.
    dated: Mutex<Option<Dated>>,
}

/// Headers valid for one second.
#[derive(Debug, Clone)]
struct Dated {
    secs: i64,
    date: Option<AsciiMetadataValue>,
    authorization: Option<AsciiMetadataValue>,
}

impl RequestHeaders {
    pub(crate) fn new(
        client_id: &str,
        credentials: Option<crate::auth::Credentials>,
    ) -> Result<Self, ClientError> {
        if let Some(c) = &credentials
            && AsciiMetadataValue::try_from(c.authorization("0")).is_err()
        {
            return Err(ClientError::Config(format!(
                "access key {:?} is not a valid header value",
                c.access_key
            )));
        }
        let client_id = client_id.parse().map_err(|_| {
            ClientError::Config(format!(
                "client id {client_id:?} is not a valid header value"
            ))
        })?;
        Ok(Self {
            client_id,
            version: AsciiMetadataValue::from_static(CLIENT_VERSION),
            request_ids: MessageIdGenerator::new(),
            credentials,
            dated: Mutex::new(None),
        })
    }

    /// The date and authorization headers for `now`.
    fn dated(&self, now: SystemTime) -> Dated {
        let secs = unix_secs(now);
        let mut cached = self.dated.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = &*cached
            && d.secs == secs
        {
            return d.clone();
        }
        let date = format_date_time(now);
        let d = Dated {
            secs,
            authorization: self
                .credentials
                .as_ref()
                .and_then(|c| AsciiMetadataValue::try_from(c.authorization(&date)).ok()),
            date: date.parse().ok(),
        };
        *cached = Some(d.clone());
        d
    }

    /// Adds the `x-mq-*` headers to `req`.
    pub(crate) fn apply<T>(&self, req: &mut Request<T>) {
        let md = req.metadata_mut();
        md.insert("x-mq-client-id", self.client_id.clone());
        md.insert("x-mq-language", AsciiMetadataValue::from_static("RUST"));
        md.insert("x-mq-protocol", AsciiMetadataValue::from_static("v2"));
        md.insert("x-mq-client-version", self.version.clone());
        let now = SystemTime::now();
        let dated = self.dated(now);
        if let Some(v) = dated.authorization {
            md.insert("authorization", v);
        }
        if let Some(v) = dated.date {
            md.insert("x-mq-date-time", v);
        }
        if let Ok(v) = AsciiMetadataValue::try_from(self.request_ids.next_id_at(now)) {
            md.insert("x-mq-request-id", v);
        }
    }
}

/// Formats `t` as `yyyyMMdd'T'HHmmss'Z'` in UTC.
pub fn format_date_time(t: SystemTime) -> String {
    let secs = unix_secs(t);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A best-effort name of this host (for `born_host` and the client id).
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn date_time_format_is_utc_compact() {
        assert_eq!(format_date_time(UNIX_EPOCH), "19700101T000000Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(format_date_time(t), "20231114T221320Z");
        // A leap day.
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096);
        assert_eq!(format_date_time(t), "20240229T123456Z");
    }

    #[test]
    fn headers_are_added() {
        let h = RequestHeaders::new("me@1", None).unwrap();
        let mut req = Request::new(());
        h.apply(&mut req);
        let md = req.metadata();
        assert_eq!(md.get("x-mq-client-id").unwrap(), "me@1");
        assert_eq!(md.get("x-mq-language").unwrap(), "RUST");
        assert_eq!(md.get("x-mq-protocol").unwrap(), "v2");
        assert_eq!(md.get("x-mq-client-version").unwrap(), CLIENT_VERSION);
        assert_eq!(md.get("x-mq-date-time").unwrap().len(), 16);
        assert!(md.get("x-mq-request-id").is_some());
        assert!(md.get("authorization").is_none());
        assert!(RequestHeaders::new("a\nb", None).is_err());
        let signed =
            RequestHeaders::new("me@1", Some(crate::auth::Credentials::new("ak", "sk"))).unwrap();
        let mut req = Request::new(());
        signed.apply(&mut req);
        let md = req.metadata();
        let date = md.get("x-mq-date-time").unwrap().to_str().unwrap();
        let want = crate::auth::Credentials::new("ak", "sk").authorization(date);
        assert_eq!(md.get("authorization").unwrap(), want.as_str());
        assert!(
            RequestHeaders::new("me", Some(crate::auth::Credentials::new("a\nk", "s"))).is_err()
        );
    }

    #[test]
    fn dated_headers_follow_the_clock_second() {
        let h =
            RequestHeaders::new("me@1", Some(crate::auth::Credentials::new("ak", "sk"))).unwrap();
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let a = h.dated(t);
        assert_eq!(a.date.as_ref().unwrap(), "20231114T221320Z");
        let want = crate::auth::Credentials::new("ak", "sk").authorization("20231114T221320Z");
        assert_eq!(a.authorization.as_ref().unwrap(), want.as_str());
        // Same second: the cached values; next second: fresh ones.
        let b = h.dated(t + Duration::from_millis(999));
        assert_eq!(b.date, a.date);
        assert_eq!(b.authorization, a.authorization);
        let c = h.dated(t + Duration::from_secs(1));
        assert_eq!(c.date.as_ref().unwrap(), "20231114T221321Z");
        let want = crate::auth::Credentials::new("ak", "sk").authorization("20231114T221321Z");
        assert_eq!(c.authorization.as_ref().unwrap(), want.as_str());
        // Request ids differ per request.
        let (mut r1, mut r2) = (Request::new(()), Request::new(()));
        h.apply(&mut r1);
        h.apply(&mut r2);
        assert_ne!(
            r1.metadata().get("x-mq-request-id"),
            r2.metadata().get("x-mq-request-id")
        );
    }
}
