//! The machine's CPU time over a bench window, from `/proc/stat` (Linux): whether a run was
//! bound by the processors rather than by the disk. A benchmark that shares the machine's
//! cores with the servers it loads needs that beside its ratios.

/// Cumulative CPU ticks of the whole machine, all cores summed (the `cpu` line of
/// `/proc/stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// Every tick counted on the line (guest time is already inside user and nice).
    total: u64,
    idle: u64,
    iowait: u64,
}

/// What the machine's cores did between two readings, as shares of all their time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuShare {
    /// Running anything: user, system, interrupts, stolen by the hypervisor.
    pub busy: f64,
    /// Idle with a disk request outstanding.
    pub iowait: f64,
    pub cores: usize,
}

impl CpuTimes {
    /// The machine's counters now; `None` where `/proc/stat` cannot be read or parsed.
    pub fn now() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    fn parse(stat: &str) -> Option<Self> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        // user nice system idle iowait irq softirq steal [guest guest_nice]
        if f.len() < 8 {
            return None;
        }
        Some(CpuTimes {
            total: f[..8].iter().sum(),
            idle: f[3],
            iowait: f[4],
        })
    }

    /// The shares from `self` (earlier) to `later`; `None` when no tick passed.
    pub fn share_until(&self, later: &CpuTimes, cores: usize) -> Option<CpuShare> {
        let total = later.total.checked_sub(self.total).filter(|t| *t > 0)? as f64;
        let idle = later.idle.saturating_sub(self.idle) as f64;
        let iowait = later.iowait.saturating_sub(self.iowait) as f64;
        Some(CpuShare {
            busy: ((total - idle - iowait) / total).clamp(0.0, 1.0),
            iowait: (iowait / total).clamp(0.0, 1.0),
            cores,
        })
    }
}

impl CpuShare {
    pub fn line(&self) -> String {
        format!(
            "machine CPU over the measured window: {:.0}% busy of {} cores, {:.0}% iowait",
            self.busy * 100.0,
            self.cores,
            self.iowait * 100.0
        )
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({ "busy": self.busy, "iowait": self.iowait, "cores": self.cores })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "cpu  100 0 50 800 40 0 10 0 0 0\ncpu0 50 0 25 400 20 0 5 0 0 0\nintr 1\n";
    const B: &str = "cpu  400 0 150 900 80 0 30 0 0 0\ncpu0 200 0 75 450 40 0 15 0 0 0\nintr 2\n";

    #[test]
    fn shares_come_from_the_summed_line() {
        let (a, b) = (CpuTimes::parse(A).unwrap(), CpuTimes::parse(B).unwrap());
        // total 1000 -> 1560 (+560); idle +100, iowait +40; busy = 420.
        let s = a.share_until(&b, 2).unwrap();
        assert!((s.busy - 420.0 / 560.0).abs() < 1e-9, "{s:?}");
        assert!((s.iowait - 40.0 / 560.0).abs() < 1e-9, "{s:?}");
        assert_eq!(
            s.line(),
            "machine CPU over the measured window: 75% busy of 2 cores, 7% iowait"
        );
    }

    #[test]
    fn nothing_without_a_cpu_line_or_a_tick() {
        assert_eq!(CpuTimes::parse("intr 1\n"), None);
        assert_eq!(CpuTimes::parse("cpu  1 2 3\n"), None);
        assert_eq!(CpuTimes::parse("cpu  1 2 x 4 5 6 7 8\n"), None);
        let a = CpuTimes::parse(A).unwrap();
        assert!(a.share_until(&a, 2).is_none());
    }

    #[test]
    fn this_machine_has_a_reading() {
        if cfg!(target_os = "linux") {
            assert!(CpuTimes::now().is_some());
        }
    }
}
