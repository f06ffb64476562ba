//! The producer host: two concurrent senders of unique ids to whoever the controller says
//! is master. A receipt is recorded only when a `SendOk` reply actually arrived; a timeout or
//! a refusal counts for nothing (and ids are never retried, so there is no dedup to model).

use std::time::Duration;

use crate::broker::host;
use crate::net::{self, Req, Resp};
use crate::shared::{Ack, World, now, now_ms};

const SENDERS: u64 = 2;

async fn sender(sh: World, k: u64) {
    let mut master: Option<String> = None;
    let mut n: u64 = 0;
    let rpc = Duration::from_millis(sh.timing.rpc);
    loop {
        tokio::time::sleep(Duration::from_millis(30)).await;
        if now() >= sh.producer_stop.get() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        if master.is_none()
            && let Some(Resp::View(v)) = net::call("controller", &Req::GetView, rpc).await
        {
            master = v.master_addrs().map(|a| a.grpc.clone());
        }
        let Some(m) = master.clone() else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        n += 1;
        let id = n * SENDERS + k;
        let wait = Duration::from_millis(sh.timing.ack_wait + sh.timing.rpc * 2);
        match net::call(&m, &Req::Send { id }, wait).await {
            Some(Resp::SendOk { epoch, broker }) => {
                let host_id = (0..sh.brokers).find(|i| host(*i) == m).unwrap_or(u64::MAX);
                sh.acks.borrow_mut().push(Ack {
                    id,
                    epoch,
                    broker,
                    host: host_id,
                    at_ms: now_ms(),
                });
            }
            Some(Resp::Refused(why)) => {
                if why.starts_with("not master") || why.starts_with("deposed") {
                    master = None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ => {
                master = None;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Runs the producer host.
pub async fn run(sh: World) -> turmoil::Result {
    for k in 0..SENDERS {
        tokio::task::spawn_local(sender(sh.clone(), k));
    }
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}
