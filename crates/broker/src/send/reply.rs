//! Stage 7: the answer. Repeats within the request are answered as their first copy,
//! stored timer messages get their recall handle and half messages their transaction id,
//! and the request gets its overall status.

use sofamq_proto::v2::{Code, SendMessageResponse, SendResultEntry, Status};

use super::batch::{Batch, Special};
use crate::broker::Broker;
use crate::error::{BrokerError, ok_status};

/// The answer to a request refused whole (nothing of it stored).
pub(super) fn whole_failure(e: &BrokerError) -> SendMessageResponse {
    SendMessageResponse {
        status: Some(e.status()),
        entries: Vec::new(),
    }
}

/// The answer to a request that passed admission.
pub(super) fn answer(broker: &Broker, batch: Batch) -> SendMessageResponse {
    let Batch {
        mut entries,
        special,
        same_request,
        ..
    } = batch;
    for (slot, first) in same_request {
        entries[slot].status = entries[first].status.clone();
        entries[slot].offset = entries[first].offset;
    }
    if !special.is_empty() {
        finish_special(broker, &mut entries, special);
    }
    SendMessageResponse {
        status: Some(overall(&entries)),
        entries,
    }
}

/// Gives stored timer messages their recall handle and half messages their
/// transaction id, and wakes the services that index them.
fn finish_special(broker: &Broker, entries: &mut [SendResultEntry], special: Vec<Option<Special>>) {
    let ok = Code::Ok as i32;
    let mut timers = false;
    let mut halves = false;
    for (e, sp) in entries.iter_mut().zip(special) {
        let (Some(sp), true) = (sp, e.status.as_ref().is_some_and(|s| s.code == ok)) else {
            continue;
        };
        let broker_name = broker.config().broker_name.clone();
        match sp {
            Special::Timer { topic, due_ms } => {
                timers = true;
                e.recall_handle = crate::handles::RecallHandle {
                    broker: broker_name,
                    topic,
                    queue_offset: e.offset as u64,
                    due_ms,
                    message_id: e.message_id.clone(),
                }
                .encode();
            }
            Special::Half => {
                halves = true;
                e.transaction_id = crate::handles::TransactionId {
                    broker: broker_name,
                    queue_offset: e.offset as u64,
                    message_id: e.message_id.clone(),
                }
                .encode();
            }
        }
    }
    if timers {
        broker.timers().wake();
    }
    if halves {
        broker.txns().wake();
    }
}

/// The request's status: OK when every entry is OK, the entry's own status for a
/// single message, MULTIPLE_RESULTS when a batch is mixed.
fn overall(entries: &[SendResultEntry]) -> Status {
    let ok = Code::Ok as i32;
    let code = |e: &SendResultEntry| e.status.as_ref().map(|s| s.code).unwrap_or(ok);
    if entries.iter().all(|e| code(e) == ok) {
        return ok_status();
    }
    if entries.len() == 1 {
        return entries[0].status.clone().unwrap_or_else(ok_status);
    }
    let first = code(&entries[0]);
    if entries.iter().all(|e| code(e) == first) {
        return entries[0].status.clone().unwrap_or_else(ok_status);
    }
    Status {
        code: Code::MultipleResults as i32,
        message: "some messages of the batch failed; see each entry".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overall_status_rules() {
        let ok = SendResultEntry {
            status: Some(ok_status()),
            ..Default::default()
        };
        let bad = SendResultEntry {
            status: Some(BrokerError::BodyEmpty.status()),
            ..Default::default()
        };
        assert_eq!(overall(&[ok.clone(), ok.clone()]).code, 20000);
        assert_eq!(overall(std::slice::from_ref(&bad)).code, 41302);
        assert_eq!(overall(&[ok, bad]).code, Code::MultipleResults as i32);
    }
}
