//! The simulated network's link faults as a simulation set them, and a crash that sends
//! nothing.
//!
//! A crash in turmoil drops the host's tokio runtime, and every dropped TCP half sends a FIN
//! (or an RST) through the simulated network, each drawing its latency from the seed's
//! random generator. Tokio drops a runtime's tasks in an order set by their task ids, and
//! task ids are counted for the whole process, so a simulation running beside another one on
//! another thread sees its FINs drawn in another order, and its seed diverges from there
//! (first seen as a consumer seed whose restarted broker's first heartbeat arrived 3 ms
//! later in one process of five). [`Links::crash`] cuts the host's outgoing links for the
//! length of the crash, so those segments are dropped without a draw: a host that loses
//! power says goodbye to nobody, and its peers learn of it by timeouts and resets, as they
//! would of a real power cut. Its segments still in flight are lost with it.
//!
//! To cut only links that are open, and leave each as the simulation's faults had it, the
//! simulation sets its partitions and holds through [`Links`], which mirrors turmoil's
//! per-direction link state.

use std::collections::HashMap;
use std::net::IpAddr;

/// One direction of a link, as the faults set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Cut,
    Held,
}

/// Every link fault a simulation sets goes through here; see the module doc.
#[derive(Debug, Default)]
pub struct Links {
    /// (from, to) -> state; absent means healthy.
    dirs: HashMap<(IpAddr, IpAddr), Dir>,
}

impl Links {
    pub fn new() -> Self {
        Self::default()
    }

    fn set(&mut self, from: IpAddr, to: IpAddr, d: Option<Dir>) {
        match d {
            Some(d) => self.dirs.insert((from, to), d),
            None => self.dirs.remove(&(from, to)),
        };
    }

    fn both(&mut self, sim: &turmoil::Sim<'_>, a: &str, b: &str, d: Option<Dir>) {
        let (a, b) = (sim.lookup(a), sim.lookup(b));
        self.set(a, b, d);
        self.set(b, a, d);
    }

    /// Both directions between `a` and `b` drop what is sent (and what was in flight).
    pub fn partition(&mut self, sim: &turmoil::Sim<'_>, a: &str, b: &str) {
        sim.partition(a, b);
        self.both(sim, a, b, Some(Dir::Cut));
    }

    /// `from` -> `to` drops what is sent (and what `from` had in flight).
    pub fn partition_oneway(&mut self, sim: &turmoil::Sim<'_>, from: &str, to: &str) {
        sim.partition_oneway(from, to);
        self.set(sim.lookup(from), sim.lookup(to), Some(Dir::Cut));
    }

    /// Both directions healthy again; held messages stay held (turmoil's `repair`).
    pub fn repair(&mut self, sim: &turmoil::Sim<'_>, a: &str, b: &str) {
        sim.repair(a, b);
        self.both(sim, a, b, None);
    }

    /// `from` -> `to` healthy again.
    pub fn repair_oneway(&mut self, sim: &turmoil::Sim<'_>, from: &str, to: &str) {
        sim.repair_oneway(from, to);
        self.set(sim.lookup(from), sim.lookup(to), None);
    }

    /// Both directions hold what is sent until [`Links::release`].
    pub fn hold(&mut self, sim: &turmoil::Sim<'_>, a: &str, b: &str) {
        sim.hold(a, b);
        self.both(sim, a, b, Some(Dir::Held));
    }

    /// Both directions healthy; what was held is delivered.
    pub fn release(&mut self, sim: &turmoil::Sim<'_>, a: &str, b: &str) {
        sim.release(a, b);
        self.both(sim, a, b, None);
    }

    /// Crashes host `h` without a word on the network (see the module doc): its outgoing
    /// links are cut while its runtime is dropped, then set back as they were. A held link
    /// is cut too: it would draw nothing, but it would queue the segments in drop order and
    /// deliver them in that order at the release. A link a fault cuts already drops them and
    /// is left alone.
    pub fn crash(&mut self, sim: &mut turmoil::Sim<'_>, h: &str) {
        let me = sim.lookup(h);
        let mut peers = Vec::new();
        sim.links(|links| {
            for link in links {
                let (a, b) = link.pair();
                if a == me || b == me {
                    peers.push(if a == me { b } else { a });
                }
            }
        });
        peers.sort_unstable();
        peers.retain(|p| self.dirs.get(&(me, *p)) != Some(&Dir::Cut));
        for p in &peers {
            sim.partition_oneway(me, *p);
        }
        sim.crash(h);
        for p in &peers {
            let held = |a, b| self.dirs.get(&(a, b)) == Some(&Dir::Held);
            match (held(me, *p), held(*p, me)) {
                (false, _) => sim.repair_oneway(me, *p),
                // Held both ways, as a hold sets it: hold again.
                (true, true) => sim.hold(me, *p),
                // Held one way only (the other cut since): turmoil cannot hold one way,
                // so this direction stays cut until the fault's release heals it.
                (true, false) => self.set(me, *p, Some(Dir::Cut)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use turmoil::net::{TcpListener, TcpStream};

    /// A crashed host's dropped connections send no FIN: its peer's read stays pending
    /// where plain `Sim::crash` would have ended it. (Without the cut, the read returns 0.)
    #[test]
    fn a_crash_through_links_sends_no_fin() {
        for silent in [false, true] {
            let mut sim = turmoil::Builder::new()
                .simulation_duration(Duration::from_secs(5))
                .build();
            sim.host("server", || async {
                let l = TcpListener::bind(("0.0.0.0", 7000)).await?;
                let mut held = Vec::new();
                loop {
                    let (s, _) = l.accept().await?;
                    held.push(s);
                }
            });
            let closed = std::rc::Rc::new(std::cell::Cell::new(None));
            let seen = closed.clone();
            sim.client("peer", async move {
                use tokio::io::AsyncReadExt;
                let mut s = TcpStream::connect(("server", 7000)).await?;
                let mut buf = [0u8; 8];
                let r = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
                seen.set(Some(r.is_ok()));
                Ok(())
            });
            for _ in 0..200 {
                sim.step().expect("step");
            }
            let mut links = Links::new();
            if silent {
                links.crash(&mut sim, "server");
            } else {
                sim.crash("server");
            }
            sim.run().expect("run");
            assert_eq!(
                closed.get(),
                Some(!silent),
                "silent {silent}: did the peer's read end before its timeout"
            );
        }
    }
}
