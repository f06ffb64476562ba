//! A minimal global `metrics` recorder that keeps counters in memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

#[derive(Default)]
struct Counters(Mutex<HashMap<String, Arc<AtomicU64>>>);

fn key_string(name: &str, labels: &[(&str, &str)]) -> String {
    let mut s = name.to_string();
    for (k, v) in labels {
        s.push_str(&format!("|{k}={v}"));
    }
    s
}

impl Recorder for &'static Counters {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let labels: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
        let k = key_string(key.name(), &labels);
        let c = self.0.lock().unwrap().entry(k).or_default().clone();
        Counter::from_arc(c)
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

fn counters() -> &'static Counters {
    static C: OnceLock<&'static Counters> = OnceLock::new();
    C.get_or_init(|| {
        let c: &'static Counters = Box::leak(Box::default());
        metrics::set_global_recorder(c).expect("recorder installed once");
        c
    })
}

/// Installs the recorder (idempotent).
pub fn install() {
    counters();
}

/// The value of counter `name` with label `topic`.
pub fn counter(name: &str, topic: &str) -> u64 {
    let k = key_string(name, &[("topic", topic)]);
    counters()
        .0
        .lock()
        .unwrap()
        .get(&k)
        .map(|c| c.load(Ordering::SeqCst))
        .unwrap_or(0)
}
