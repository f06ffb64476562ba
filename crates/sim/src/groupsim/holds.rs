//! Where the group simulation holds a broker's tasks ([`sofamq_broker::pause`]): briefly at
//! random on the send path, and everything through a stall.

use super::*;

/// Percent of the asks at a point of the send path that hold the request (as an OS
/// deschedules a thread), each for 1 to [`HOLD_MAX_MS`] ms.
const HOLD_PERCENT: u32 = 20;
const HOLD_MAX_MS: u64 = 100;

/// How long broker `id` holds a send at point `p` ([`sofamq_broker::pause`]): through the
/// rest of a stall and a little after (a stopped process resumes its threads in no set
/// order), or, at random, briefly.
fn hold(l: &Ledger, id: u64, p: Point) -> Option<Duration> {
    let now =
        u64::try_from(turmoil::sim_elapsed().unwrap_or_default().as_millis()).unwrap_or(u64::MAX);
    let mut rng = l.holds.borrow_mut();
    let d = if let Some(&until) = l.stalled_until.borrow().get(&id)
        && until > now
    {
        // In steps, so a stall healed early (at the end of the fault window) lets go; the
        // last step adds the task's own delay in resuming.
        let left = until - now;
        let d = if left > STALL_STEP_MS {
            STALL_STEP_MS
        } else {
            left + rng.random_range(0..=1_000)
        };
        if p.is_send() && d > STALL_STEP_MS {
            l.j.log(&format!("b{id}: a send held at {p:?} for {d} ms (stalled)"));
        }
        d
    } else if p.is_send() && rng.random_ratio(HOLD_PERCENT, 100) {
        rng.random_range(1..=HOLD_MAX_MS)
    } else {
        return None;
    };
    if p == Point::BeforeAppend {
        let mut held = l.held_appends.borrow_mut();
        held.retain(|(_, until)| *until > now);
        held.push((id, now + d));
    }
    Some(Duration::from_millis(d))
}

/// Whether broker `id` holds a send it admitted but has not appended yet, at `t`.
pub(super) fn holds_an_append(l: &Ledger, id: u64, t: u64) -> bool {
    l.held_appends
        .borrow()
        .iter()
        .any(|(b, until)| *b == id && *until > t)
}

/// Clears this thread's hold hook when dropped.
pub(super) struct HoldHook;

impl HoldHook {
    pub(super) fn install(l: &Rc<Ledger>) -> Self {
        let l = l.clone();
        pause::set(Some(Rc::new(move |id, p| hold(&l, id, p))));
        HoldHook
    }
}

impl Drop for HoldHook {
    fn drop(&mut self) {
        pause::set(None);
    }
}
