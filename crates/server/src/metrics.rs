//! Building blocks for the Prometheus endpoints of every SofaMQ server: a text-format
//! writer, a fixed-bucket atomic histogram and a connection counter.
//!
//! Each server keeps its own counters (atomics, updated on the hot path without locks or
//! allocation) and renders them when `/metrics` is scraped. There is no process-global
//! registry, so `sofamq standalone` (several servers in one process) serves each
//! component's own numbers on its own port.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_stream::{Stream, StreamExt};

/// Prometheus text exposition format (version 0.0.4) writer.
#[derive(Debug, Default)]
pub struct Text {
    out: String,
}

/// Escapes a label value (`\`, `"` and newlines).
pub fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Renders `name="value"` pairs (values escaped) as the inside of `{...}`.
pub fn labels(pairs: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{k}=\"{}\"", escape(v));
    }
    s
}

impl Text {
    /// An empty document.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a metric family: `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample; `labels` is the already rendered inside of `{...}` (may be empty).
    pub fn sample(&mut self, name: &str, labels: &str, value: f64) {
        let v = if value.is_finite() {
            format!("{value}")
        } else if value.is_nan() {
            "NaN".into()
        } else if value > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {v}");
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {v}");
        }
    }

    /// A whole single-sample family.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, labels: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, labels, value);
    }

    /// Histogram samples (`_bucket`, `_sum`, `_count`) from non-cumulative bucket counts;
    /// `bounds` are the upper bounds in the metric's unit, `counts` has one more entry
    /// (the overflow bucket).
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &str,
        bounds: &[f64],
        counts: &[u64],
        sum: f64,
    ) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0u64;
        for (b, c) in bounds.iter().zip(counts) {
            cum += c;
            let _ = writeln!(self.out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
        }
        cum += counts.get(bounds.len()).copied().unwrap_or(0);
        let _ = writeln!(self.out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cum}");
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, cum as f64);
    }

    /// The finished document.
    pub fn finish(self) -> String {
        self.out
    }
}

/// Latency bucket bounds in seconds shared by the servers' request histograms.
pub const LATENCY_BUCKETS_S: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.003, 0.005, 0.007_5, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 5.0,
];

/// A lock-free histogram over [`LATENCY_BUCKETS_S`]: one relaxed atomic add per bucket hit.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_S.len() + 1],
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BUCKETS_S.partition_point(|b| *b < s);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(
            d.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Writes the histogram samples of family `name`.
    pub fn render(&self, t: &mut Text, name: &str, labels: &str) {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        t.histogram(name, labels, &LATENCY_BUCKETS_S, &counts, sum);
    }
}

/// Open and accepted connection counts of one server.
#[derive(Debug, Default)]
pub struct Connections {
    accepted: AtomicU64,
    closed: AtomicU64,
}

impl Connections {
    /// Connections accepted since start.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.accepted()
            .saturating_sub(self.closed.load(Ordering::Relaxed))
    }
}

/// A connection that counts itself closed when dropped.
pub type Counted<T> = crate::net::Guarded<T, CloseCounter>;

/// Counts its connection closed when dropped.
#[derive(Debug)]
pub struct CloseCounter(Arc<Connections>);

impl Drop for CloseCounter {
    fn drop(&mut self) {
        self.0.closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Wraps an accept stream so that `conns` counts accepted and open connections.
pub fn counted<T, E, S>(
    incoming: S,
    conns: Arc<Connections>,
) -> impl Stream<Item = Result<Counted<T>, E>>
where
    S: Stream<Item = Result<T, E>>,
{
    incoming.map(move |r| {
        r.map(|io| {
            conns.accepted.fetch_add(1, Ordering::Relaxed);
            crate::net::Guarded::new(io, CloseCounter(conns.clone()))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_labels_are_escaped() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(2));
        h.observe(Duration::from_secs(10));
        let mut t = Text::new();
        t.family("x_seconds", "histogram", "test");
        h.render(&mut t, "x_seconds", &labels(&[("a", "q\"\\\n")]));
        let s = t.finish();
        assert!(
            s.contains("x_seconds_bucket{a=\"q\\\"\\\\\\n\",le=\"0.0001\"} 1\n"),
            "{s}"
        );
        assert!(s.contains("le=\"0.002\"} 2\n"), "{s}");
        assert!(s.contains("le=\"5\"} 2\n"), "{s}");
        assert!(s.contains("le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_seconds_count{a=\"q\\\"\\\\\\n\"} 3\n"), "{s}");
        assert_eq!(h.count(), 3);
    }
}
