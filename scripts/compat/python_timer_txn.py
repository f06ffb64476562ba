"""Timer (DELAY) and transactional messages through the official RocketMQ 5
Python client (rocketmq-python-client 5.1.2): each MODE is one scenario that
produces with Producer, consumes with SimpleConsumer on the same topic, checks
what it sees and exits 0 only if everything matched. Every wait is bounded.

Usage: python_timer_txn.py MODE ACCESS_POINT TOPIC GROUP [CHECK_DELAY_MS]

MODE
  delay      a DELAY message ~3 s ahead: not received before its due time,
             received once after it (no earlier than due - 20 ms, at most 3 s late)
  recall     two DELAY messages ~5 s ahead; one recalled with
             Producer.recall_message(topic, receipt.recall_handle): it never
             arrives (until due + 3 s), the other does; recalling the delivered
             one then fails with PRECONDITION_FAILED
  commit     a half message is not received while open, is received exactly once
             after Transaction.commit(); a second commit is OK
  rollback   a rolled-back half message is never received (and committing it
             afterwards fails with PRECONDITION_FAILED); a committed control
             message in the same run is received
  checkback  two half messages left open by the application; the broker's
             RecoverOrphanedTransactionCommand calls the TransactionChecker, which
             answers COMMIT for one (received once) and ROLLBACK for the other
             (never received). CHECK_DELAY_MS is the broker's
             transaction.check_delay_ms: no check may come earlier.

The client's send takes Message.delivery_timestamp as epoch SECONDS (it sets
system_properties.delivery_timestamp.seconds), so due times are whole seconds.

stdout: one JSON line per event ({"event": ...}), then {"done": MODE, ...} on
success or {"fail": "..."} on failure; stderr: the failure and the client's own
warnings/errors (its log otherwise goes to ~/logs/rocketmq_python/).
"""

import json
import logging
import os
import signal
import sys
import threading
import time
import uuid

from rocketmq import (ClientConfiguration, Credentials, FilterExpression, Message,
                      Producer, SimpleConsumer, TransactionChecker,
                      TransactionResolution)

# Hard bound on the whole run: the Rust driver bounds it too, this names the cause.
WATCHDOG_S = 90
# Long-polling time of each receive (s); short so lateness measured is the broker's.
AWAIT_S = 1
INVISIBLE_S = 20
CLOCK_TOLERANCE_MS = 20
MAX_LATE_MS = 3000
PRECONDITION_FAILED = 42800
TRANSACTION = 4  # apache.rocketmq.v2.MessageType.TRANSACTION
DELAY = 3


class Failure(Exception):
    pass


def now_ms():
    return int(time.time() * 1000)


def emit(**fields):
    print(json.dumps(fields, sort_keys=True), flush=True)


def check(cond, what):
    if not cond:
        raise Failure(what)


def code_of(e):
    return getattr(e, "code", None)


def client_log_to_stderr():
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("client-log %(asctime)s [%(levelname)s] %(message)s"))
    logging.getLogger("rocketmq-python-client").addHandler(handler)


def watchdog(signum, frame):  # noqa: ARG001 - signal handler signature
    msg = f"watchdog: scenario still running after {WATCHDOG_S} s"
    print(json.dumps({"fail": msg}), flush=True)
    print(f"FAIL: {msg}", file=sys.stderr, flush=True)
    os._exit(3)


class Recorder:
    """Receives (and acks) into a list of received messages with their receive times."""

    def __init__(self, consumer):
        self.consumer = consumer
        self.got = []  # (message_id, receive_ms, Message)
        self.errors = 0

    def poll(self):
        try:
            msgs = self.consumer.receive(16, INVISIBLE_S)
        except Exception as e:  # noqa: BLE001 - a few transient errors are tolerated
            self.errors += 1
            print(f"receive error {self.errors}: {e!r}", file=sys.stderr, flush=True)
            check(self.errors <= 5, f"receive failed {self.errors} times, last: {e!r}")
            time.sleep(0.2)
            return []
        t = now_ms()
        for m in msgs:
            self.got.append((m.message_id, t, m))
            emit(event="received", id=m.message_id, at_ms=t, body=m.body.decode(errors="replace"),
                 tag=m.tag, attempt=m.delivery_attempt, delivery_timestamp=m.delivery_timestamp,
                 message_type=m.message_type)
            try:
                self.consumer.ack(m)
            except Exception as e:  # noqa: BLE001
                raise Failure(f"ack of {m.message_id} failed: {e!r}")
        return msgs

    def until(self, deadline_ms, done=lambda: False):
        """Polls until deadline_ms or until done() holds (checked between polls)."""
        while now_ms() < deadline_ms and not done():
            self.poll()

    def ids(self):
        return [i for i, _, _ in self.got]

    def times_of(self, message_id):
        return [t for i, t, _ in self.got if i == message_id]

    def message(self, message_id):
        for i, _, m in self.got:
            if i == message_id:
                return m
        return None


def make_message(topic, case, tag):
    msg = Message()
    msg.topic = topic
    msg.body = f"{case}-{uuid.uuid4().hex}".encode()
    msg.tag = tag
    msg.keys = f"key-{case}"
    msg.add_property("case", case)
    return msg


def same_content(got, sent, what):
    check(got.body == sent.body, f"{what}: body {got.body!r} != sent {sent.body!r}")
    check(got.tag == sent.tag, f"{what}: tag {got.tag!r} != sent {sent.tag!r}")
    check(set(got.keys) == set(sent.keys), f"{what}: keys {got.keys!r} != sent {sent.keys!r}")
    check(got.properties.get("case") == sent.properties["case"],
          f"{what}: user properties {got.properties!r} lack case={sent.properties['case']!r}")


def only_expected(rec, allowed):
    stray = [i for i in rec.ids() if i not in allowed]
    check(not stray, f"unexpected messages received: {stray}")


def start_consumer(access_point, group, topic, clients):
    config = ClientConfiguration(access_point, Credentials())
    consumer = SimpleConsumer(config, group, {topic: FilterExpression()}, await_duration=AWAIT_S)
    consumer.startup()
    clients.append(consumer)
    rec = Recorder(consumer)
    # One (empty) round first: the group exists and is polling before anything is sent.
    rec.poll()
    return rec


def start_producer(access_point, topic, clients, checker=None):
    config = ClientConfiguration(access_point, Credentials())
    # The topic is given here so that the Settings the client sends on its Telemetry
    # stream at startup list it in publishing.topics (it re-sends Settings only every 300 s).
    producer = Producer(config, (topic,), checker=checker)
    producer.startup()
    clients.append(producer)
    return producer


def next_second_plus(seconds):
    """A whole epoch second at least `seconds` ahead (the client's granularity)."""
    return int(time.time()) + 1 + seconds


def send_delay(producer, topic, case, due_s):
    msg = make_message(topic, case, "timer")
    msg.delivery_timestamp = due_s  # epoch seconds: see the module docstring
    before = now_ms()
    receipt = producer.send(msg)
    emit(event="sent", case=case, id=receipt.message_id, due_ms=due_s * 1000, sent_ms=before,
         recall_handle=receipt.recall_handle, offset=receipt.offset)
    check(receipt.recall_handle, f"{case}: the send receipt of a DELAY message has no recall_handle")
    return msg, receipt


def check_timely(rec, receipt, sent, due_ms, what):
    times = rec.times_of(receipt.message_id)
    check(times, f"{what}: message {receipt.message_id} (due {due_ms}) not received by "
                 f"{due_ms + MAX_LATE_MS} (now {now_ms()})")
    check(len(times) == 1, f"{what}: received {len(times)} times, expected once: {times}")
    t = times[0]
    check(t >= due_ms - CLOCK_TOLERANCE_MS,
          f"{what}: received {due_ms - t} ms BEFORE its due time {due_ms} (at {t})")
    check(t <= due_ms + MAX_LATE_MS, f"{what}: received {t - due_ms} ms after its due time (bound {MAX_LATE_MS})")
    got = rec.message(receipt.message_id)
    same_content(got, sent, what)
    check(got.delivery_timestamp == due_ms,
          f"{what}: delivered delivery_timestamp {got.delivery_timestamp} != due {due_ms}")
    return t


def mode_delay(access_point, topic, group, clients):
    rec = start_consumer(access_point, group, topic, clients)
    producer = start_producer(access_point, topic, clients)
    due_s = next_second_plus(3)
    due_ms = due_s * 1000
    sent, receipt = send_delay(producer, topic, "delay", due_s)
    rec.until(due_ms + MAX_LATE_MS + 500, done=lambda: receipt.message_id in rec.ids())
    check_timely(rec, receipt, sent, due_ms, "delay")
    # Listen a little longer: no second delivery.
    rec.until(now_ms() + 2000)
    only_expected(rec, {receipt.message_id})
    t = rec.times_of(receipt.message_id)
    check(len(t) == 1, f"delay: delivered {len(t)} times")
    return {"id": receipt.message_id, "due_ms": due_ms, "received_ms": t[0], "late_ms": t[0] - due_ms}


def mode_recall(access_point, topic, group, clients):
    rec = start_consumer(access_point, group, topic, clients)
    producer = start_producer(access_point, topic, clients)
    due_s = next_second_plus(5)
    due_ms = due_s * 1000
    gone, gone_r = send_delay(producer, topic, "recalled", due_s)
    kept, kept_r = send_delay(producer, topic, "kept", due_s)
    try:
        recalled_id = producer.recall_message(topic, gone_r.recall_handle)
    except Exception as e:  # noqa: BLE001
        raise Failure(f"recall_message({topic!r}, {gone_r.recall_handle!r}) failed: code {code_of(e)}: {e}")
    emit(event="recalled", id=recalled_id, at_ms=now_ms())
    check(recalled_id == gone_r.message_id,
          f"recall answered message_id {recalled_id!r}, expected {gone_r.message_id!r}")
    check(now_ms() < due_ms - 1000, "recall: the recall came too close to the due time for a fair test")
    try:
        again = producer.recall_message(topic, gone_r.recall_handle)
        emit(event="recalled-again", id=again)
    except Exception as e:  # noqa: BLE001
        raise Failure(f"recalling a recalled message again must be OK (idempotent): code {code_of(e)}: {e}")
    # Nothing of the recalled one until due + 3 s; the kept one arrives in that window.
    rec.until(due_ms + MAX_LATE_MS)
    check(gone_r.message_id not in rec.ids(),
          f"the recalled message {gone_r.message_id} was delivered at {rec.times_of(gone_r.message_id)} (due {due_ms})")
    t = check_timely(rec, kept_r, kept, due_ms, "recall (the message not recalled)")
    only_expected(rec, {kept_r.message_id})
    try:
        late = producer.recall_message(topic, kept_r.recall_handle)
        raise Failure(f"recalling an already delivered message must fail (PRECONDITION_FAILED), it answered {late!r}")
    except Failure:
        raise
    except Exception as e:  # noqa: BLE001
        check(code_of(e) == PRECONDITION_FAILED,
              f"recalling a delivered message: code {code_of(e)} ({e}), expected {PRECONDITION_FAILED}")
        emit(event="recall-delivered-refused", code=code_of(e))
    return {"recalled": gone_r.message_id, "kept": kept_r.message_id, "due_ms": due_ms,
            "kept_received_ms": t, "late_ms": t - due_ms}


class RecordingChecker(TransactionChecker):
    """Answers from `decisions` (message_id -> resolution); records every call."""

    def __init__(self):
        self.lock = threading.Condition()
        self.decisions = {}
        self.calls = []  # dicts

    def decide(self, message_id, resolution):
        with self.lock:
            self.decisions[message_id] = resolution
            self.lock.notify_all()

    def check(self, message: Message) -> TransactionResolution:
        t = now_ms()
        call = {"at_ms": t, "id": message.message_id, "topic": message.topic,
                "body": message.body.decode(errors="replace") if message.body else None,
                "tag": message.tag, "keys": sorted(message.keys), "properties": dict(message.properties),
                "message_type": message.message_type}
        with self.lock:
            # The send's receipt is back long before a check can be due; bounded anyway.
            self.lock.wait_for(lambda: message.message_id in self.decisions, timeout=2)
            resolution = self.decisions.get(message.message_id, TransactionResolution.ROLLBACK)
            call["answer"] = TransactionResolution.Name(resolution)
            self.calls.append(call)
        print(json.dumps({"event": "check", **call}, sort_keys=True), flush=True)
        return resolution

    def calls_for(self, message_id):
        with self.lock:
            return [c for c in self.calls if c["id"] == message_id]

    def all_calls(self):
        with self.lock:
            return list(self.calls)


def send_half(producer, topic, case):
    txn = producer.begin_transaction()
    msg = make_message(topic, case, "txn")
    before = now_ms()
    receipt = producer.send(msg, txn)
    emit(event="sent-half", case=case, id=receipt.message_id, transaction_id=receipt.transaction_id,
         sent_ms=before)
    check(receipt.transaction_id, f"{case}: the send receipt of a TRANSACTION message has no transaction_id")
    return txn, msg, receipt, before


def end(txn, how, case):
    try:
        (txn.commit if how == "commit" else txn.rollback)()
    except Exception as e:  # noqa: BLE001
        raise Failure(f"{case}: {how} failed: code {code_of(e)}: {e}")
    emit(event=how, case=case, at_ms=now_ms())


def no_checks(checker, why):
    calls = checker.all_calls()
    check(not calls, f"the broker checked back transactions {why}: {calls}")


def mode_commit(access_point, topic, group, clients):
    checker = RecordingChecker()
    rec = start_consumer(access_point, group, topic, clients)
    producer = start_producer(access_point, topic, clients, checker)
    txn, sent, receipt, _ = send_half(producer, topic, "commit")
    checker.decide(receipt.message_id, TransactionResolution.COMMIT)
    # Open for 2 s (below the default check delay of 6 s): nothing visible.
    rec.until(now_ms() + 2000)
    check(not rec.ids(), f"commit: received {rec.ids()} while the transaction was still open")
    committed_at = now_ms()
    end(txn, "commit", "commit")
    end(txn, "commit", "commit (repeated: must be OK)")
    rec.until(committed_at + 10_000, done=lambda: receipt.message_id in rec.ids())
    times = rec.times_of(receipt.message_id)
    check(times, f"commit: not received within 10 s of the commit at {committed_at}")
    rec.until(now_ms() + 3000)
    times = rec.times_of(receipt.message_id)
    check(len(times) == 1, f"commit: received {len(times)} times, expected exactly once: {times}")
    check(times[0] >= committed_at, f"commit: received at {times[0]}, before the commit at {committed_at}")
    same_content(rec.message(receipt.message_id), sent, "commit")
    only_expected(rec, {receipt.message_id})
    no_checks(checker, "that the application had resolved within 2 s (default check delay 6 s)")
    return {"id": receipt.message_id, "committed_ms": committed_at, "received_ms": times[0],
            "latency_ms": times[0] - committed_at}


def mode_rollback(access_point, topic, group, clients):
    checker = RecordingChecker()
    rec = start_consumer(access_point, group, topic, clients)
    producer = start_producer(access_point, topic, clients, checker)
    r_txn, _, r_receipt, _ = send_half(producer, topic, "rollback")
    checker.decide(r_receipt.message_id, TransactionResolution.ROLLBACK)
    c_txn, c_sent, c_receipt, _ = send_half(producer, topic, "control")
    checker.decide(c_receipt.message_id, TransactionResolution.COMMIT)
    rec.until(now_ms() + 1000)
    check(not rec.ids(), f"rollback: received {rec.ids()} while both transactions were open")
    end(r_txn, "rollback", "rollback")
    try:
        r_txn.commit()
        raise Failure("rollback: committing a rolled-back transaction must fail (PRECONDITION_FAILED); it was OK")
    except Failure:
        raise
    except Exception as e:  # noqa: BLE001
        check(code_of(e) == PRECONDITION_FAILED,
              f"commit after rollback: code {code_of(e)} ({e}), expected {PRECONDITION_FAILED}")
        emit(event="commit-after-rollback-refused", code=code_of(e))
    committed_at = now_ms()
    end(c_txn, "commit", "control")
    rec.until(committed_at + 10_000, done=lambda: c_receipt.message_id in rec.ids())
    check(rec.times_of(c_receipt.message_id), "rollback: the committed control message was not received within 10 s")
    rec.until(now_ms() + 3000)
    check(r_receipt.message_id not in rec.ids(),
          f"the rolled-back message {r_receipt.message_id} was received at {rec.times_of(r_receipt.message_id)}")
    times = rec.times_of(c_receipt.message_id)
    check(len(times) == 1, f"rollback: control message received {len(times)} times")
    same_content(rec.message(c_receipt.message_id), c_sent, "rollback (control)")
    only_expected(rec, {c_receipt.message_id})
    no_checks(checker, "that the application had resolved within 1 s (default check delay 6 s)")
    return {"rolled_back": r_receipt.message_id, "control": c_receipt.message_id, "control_received_ms": times[0]}


def mode_checkback(access_point, topic, group, clients, check_delay_ms):
    checker = RecordingChecker()
    rec = start_consumer(access_point, group, topic, clients)
    producer = start_producer(access_point, topic, clients, checker)
    _, c_sent, c_receipt, c_before = send_half(producer, topic, "check-commit")
    checker.decide(c_receipt.message_id, TransactionResolution.COMMIT)
    _, r_sent, r_receipt, r_before = send_half(producer, topic, "check-rollback")
    checker.decide(r_receipt.message_id, TransactionResolution.ROLLBACK)
    # The application never ends either transaction (it keeps the Transaction objects
    # unused): only the broker's check-back can resolve them.
    deadline = now_ms() + check_delay_ms + 15_000

    def resolved():
        return (checker.calls_for(c_receipt.message_id) and checker.calls_for(r_receipt.message_id)
                and c_receipt.message_id in rec.ids())

    rec.until(deadline, done=resolved)
    c_calls = checker.calls_for(c_receipt.message_id)
    r_calls = checker.calls_for(r_receipt.message_id)
    check(c_calls, f"checker never called for the open transaction {c_receipt.message_id} within "
                   f"{check_delay_ms + 15_000} ms (calls: {checker.all_calls()})")
    check(r_calls, f"checker never called for the open transaction {r_receipt.message_id} within "
                   f"{check_delay_ms + 15_000} ms (calls: {checker.all_calls()})")
    for calls, sent, before, what in ((c_calls, c_sent, c_before, "check-commit"),
                                      (r_calls, r_sent, r_before, "check-rollback")):
        first = calls[0]
        check(first["at_ms"] >= before + check_delay_ms - CLOCK_TOLERANCE_MS,
              f"{what}: checked {before + check_delay_ms - first['at_ms']} ms before check_delay_ms "
              f"({check_delay_ms}) had passed since the send")
        check(first["topic"] == topic, f"{what}: check message topic {first['topic']!r} != {topic!r}")
        check(first["body"] == sent.body.decode(), f"{what}: check message body {first['body']!r} != sent")
        check(first["tag"] == sent.tag, f"{what}: check message tag {first['tag']!r} != {sent.tag!r}")
        check(first["keys"] == sorted(sent.keys), f"{what}: check message keys {first['keys']} != {sorted(sent.keys)}")
        check(first["properties"].get("case") == sent.properties["case"],
              f"{what}: check message user properties {first['properties']} lack case={sent.properties['case']!r}")
        check(first["message_type"] == TRANSACTION,
              f"{what}: check message message_type {first['message_type']} != TRANSACTION (4)")
    check(c_receipt.message_id in rec.ids(),
          f"the transaction the checker committed (at {c_calls[0]['at_ms']}) was not received by {deadline}")
    # Listen on: the committed one is not redelivered, the rolled-back one never appears,
    # and the broker stops checking what is resolved.
    rec.until(now_ms() + 3000)
    times = rec.times_of(c_receipt.message_id)
    check(len(times) == 1, f"check-commit: received {len(times)} times, expected once: {times}")
    check(times[0] >= c_calls[0]["at_ms"], f"check-commit: received at {times[0]}, before the checker ran")
    same_content(rec.message(c_receipt.message_id), c_sent, "check-commit")
    check(r_receipt.message_id not in rec.ids(),
          f"the transaction the checker rolled back was received at {rec.times_of(r_receipt.message_id)}")
    only_expected(rec, {c_receipt.message_id})
    c_n, r_n = len(checker.calls_for(c_receipt.message_id)), len(checker.calls_for(r_receipt.message_id))
    check(c_n <= 2 and r_n <= 2,
          f"the broker kept checking resolved transactions: {c_n} and {r_n} calls ({checker.all_calls()})")
    return {"committed": c_receipt.message_id, "rolled_back": r_receipt.message_id,
            "check_after_ms": [c_calls[0]["at_ms"] - c_before, r_calls[0]["at_ms"] - r_before],
            "checks": [c_n, r_n], "received_ms": times[0]}


MODES = {"delay", "recall", "commit", "rollback", "checkback"}


def main() -> int:
    if len(sys.argv) < 5 or sys.argv[1] not in MODES:
        print(__doc__, file=sys.stderr)
        return 2
    mode, access_point, topic, group = sys.argv[1:5]
    check_delay_ms = int(sys.argv[5]) if len(sys.argv) > 5 else 1000
    signal.signal(signal.SIGALRM, watchdog)
    signal.alarm(WATCHDOG_S)
    client_log_to_stderr()
    clients = []
    started = now_ms()
    try:
        if mode == "delay":
            summary = mode_delay(access_point, topic, group, clients)
        elif mode == "recall":
            summary = mode_recall(access_point, topic, group, clients)
        elif mode == "commit":
            summary = mode_commit(access_point, topic, group, clients)
        elif mode == "rollback":
            summary = mode_rollback(access_point, topic, group, clients)
        else:
            summary = mode_checkback(access_point, topic, group, clients, check_delay_ms)
    except Failure as f:
        print(json.dumps({"fail": str(f)}), flush=True)
        print(f"FAIL ({mode}): {f}", file=sys.stderr, flush=True)
        return 1
    except Exception as e:  # noqa: BLE001 - any client error fails the scenario, named
        print(json.dumps({"fail": f"{type(e).__name__}: {e}"}), flush=True)
        print(f"FAIL ({mode}): unexpected {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        for c in reversed(clients):
            try:
                c.shutdown()
            except Exception as e:  # noqa: BLE001
                print(f"shutdown: {e!r}", file=sys.stderr, flush=True)
    print(json.dumps({"done": mode, "elapsed_ms": now_ms() - started, **summary}, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
