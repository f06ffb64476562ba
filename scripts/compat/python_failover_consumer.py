"""Runs one consumer of the official RocketMQ 5 Python client (rocketmq-python-client 5.1.2)
in its default configuration (only the access point, the group and the subscription are
set) on TOPIC as consumer group GROUP, for DURATION_S seconds or until standard input
closes, and prints one JSON line per event:

  {"event":"started","at_ms":..}
  {"event":"received","id":"..","body":"..","attempt":N,"at_ms":..}
  {"event":"ack","id":"..","ok":true|false,"error":"..","at_ms":..}     (simple only)
  {"event":"receive_error","error":"..","at_ms":..}                      (simple only)

MODE is `simple` (SimpleConsumer: receive up to 32, ack each (concurrently); an invisible
duration of 10 s) or `push` (PushConsumer: the listener returns SUCCESS and the client acks).

Usage: python_failover_consumer.py MODE ACCESS_POINT TOPIC GROUP DURATION_S
"""

import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from failover_driver import emit, error_text, now_ms, stop, watch_stop
from rocketmq import (ClientConfiguration, ConsumeResult, Credentials, FilterExpression,
                      MessageListener, PushConsumer, SimpleConsumer)


def received(msg) -> None:
    emit({"event": "received", "id": msg.message_id,
          "body": msg.body.decode(errors="replace"),
          "attempt": msg.delivery_attempt, "at_ms": now_ms()})


def ack_one(consumer):
    def ack(msg):
        try:
            consumer.ack(msg)
            return None
        except Exception as e:  # noqa: BLE001 - report every failure
            return error_text(e)
    return ack


def run_simple(access_point: str, topic: str, group: str, until: float) -> None:
    acks = ThreadPoolExecutor(max_workers=8)
    config = ClientConfiguration(access_point, Credentials())
    consumer = SimpleConsumer(config, group, {topic: FilterExpression()})
    consumer.startup()
    emit({"event": "started", "at_ms": now_ms()})
    try:
        while time.monotonic() < until and not stop.is_set():
            try:
                msgs = consumer.receive(32, 10)
            except Exception as e:  # noqa: BLE001 - report every failure
                emit({"event": "receive_error", "error": error_text(e), "at_ms": now_ms()})
                time.sleep(0.2)
                continue
            # Ack the batch concurrently (one round trip after another would make the
            # consumer fall behind the producers), each with the synchronous public ack:
            # SimpleConsumer.ack_async of 5.1.2 returns None instead of its future.
            for msg in msgs:
                received(msg)
            for msg, err in zip(msgs, acks.map(ack_one(consumer), msgs)):
                if err is None:
                    emit({"event": "ack", "id": msg.message_id, "ok": True, "at_ms": now_ms()})
                else:
                    emit({"event": "ack", "id": msg.message_id, "ok": False, "error": err,
                          "at_ms": now_ms()})
    finally:
        stop_aside(consumer)


class Listener(MessageListener):
    def consume(self, message):
        received(message)
        return ConsumeResult.SUCCESS


def run_push(access_point: str, topic: str, group: str, until: float) -> None:
    config = ClientConfiguration(access_point, Credentials())
    consumer = PushConsumer(config, group, Listener(), {topic: FilterExpression()})
    consumer.startup()
    emit({"event": "started", "at_ms": now_ms()})
    try:
        while time.monotonic() < until and not stop.is_set():
            time.sleep(0.1)
    finally:
        stop_aside(consumer)


def stop_aside(consumer) -> None:
    # Shutdown may wait on a dead endpoint: run it aside and do not wait long.
    t = threading.Thread(target=consumer.shutdown, daemon=True)
    t.start()
    t.join(5)
    emit({"event": "stopped", "at_ms": now_ms()})


def main() -> int:
    mode, access_point, topic, group = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    duration = float(sys.argv[5])
    until = time.monotonic() + duration

    watch_stop("python_failover_consumer", duration)
    run = {"simple": run_simple, "push": run_push}[mode]
    try:
        run(access_point, topic, group, until)
    except Exception as e:  # noqa: BLE001 - report every failure
        emit({"event": "start_failed", "error": error_text(e), "at_ms": now_ms()})
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
