//! The send path, one stage per file, in the order a request passes them:
//!
//! 1. [`admit`]: request-wide rules, the in-flight byte budget, and the one check on
//!    replication (master, log not fenced, lease, enough replicas in sync); a refusal
//!    answers the request whole and stores nothing.
//! 2. [`prepare`]: each message validated ([`crate::validate`]), given its queue
//!    ([`queue`]) and turned into a record; a refused message gets its own status.
//! 3. [`dedup`]: ids repeated within the request, and the window asked about the rest
//!    under one lock: a stored id is answered with its receipt, a new one is claimed.
//! 4. [`append`]: the claimed records appended in one group-commit batch, within the
//!    persist timeout; their ids completed (or released) in the window.
//! 5. [`dedup`] again: copies sent earlier or concurrently get their original's receipt.
//! 6. [`replicate`]: wait until the in-sync slaves cover everything answered as stored.
//! 7. [`reply`]: recall handles and transaction ids, and the request's overall status.
//!
//! Under simulation a request may be held between stages 3 and 4 and before stage 6, as
//! a paused process would hold it ([`crate::pause`]).
//!
//! The request state travels between the stages in one [`batch::Batch`]. Acked only once
//! the in-sync slaves hold it too (see [`crate::repl`]); a message id already stored gets
//! its original receipt and stores nothing new.

mod admit;
mod append;
mod batch;
mod dedup;
mod prepare;
pub mod queue;
mod replicate;
mod reply;

use sofamq_proto::v2::{SendMessageRequest, SendMessageResponse};

use crate::broker::Broker;
use crate::pause::{self, Point};

/// The answer to a SendMessage request, with what goes beside it in the response metadata.
#[derive(Debug)]
pub struct SendAnswer {
    pub response: SendMessageResponse,
    /// Refused whole by this group's writable master for too few in-sync replicas, and
    /// none of the request's ids is held here ([`sofamq_proto::codes::NOT_HELD_HEADER`]).
    pub not_held: bool,
}

impl Broker {
    /// Handles one SendMessage request (one or many messages).
    pub async fn send(&self, req: SendMessageRequest) -> SendMessageResponse {
        self.send_answer(req).await.response
    }

    /// [`Broker::send`], with the answer's metadata.
    pub async fn send_answer(&self, req: SendMessageRequest) -> SendAnswer {
        // Held until the answer: the request's bytes count against the budget until then.
        let admitted = match admit::admit(self, &req) {
            Ok(a) => a,
            Err(r) => {
                return SendAnswer {
                    not_held: r.by_writable_master
                        && dedup::none_held(self.repl().dedup(), &req.messages),
                    response: reply::whole_failure(&r.error),
                };
            }
        };
        let mut batch = prepare::prepare_all(self, req.messages);
        let claimed = dedup::claim(self.repl().dedup(), &mut batch);
        if !claimed.records.is_empty() {
            pause::at(self.config().broker_id, Point::BeforeAppend).await;
            append::append(self, admitted.admission, claimed, &mut batch).await;
        }
        dedup::receipts_of_copies(self, &mut batch).await;
        pause::at(self.config().broker_id, Point::BeforeReplicate).await;
        replicate::wait(self, admitted.admission, &mut batch).await;
        SendAnswer {
            response: reply::answer(self, batch),
            not_held: false,
        }
    }
}
