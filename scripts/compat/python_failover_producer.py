"""Runs PRODUCERS producers of the official RocketMQ 5 Python client
(rocketmq-python-client 5.1.2), each in its own thread with one send in flight, for
DURATION_S seconds against ACCESS_POINT, in the client's default configuration (only the
access point and the topic to prefetch are set), and prints one JSON line per send result:

  {"producer":P,"seq":S,"ok":true,"message_id":"..","start_ms":..,"end_ms":..}
  {"producer":P,"seq":S,"ok":false,"error":"..","start_ms":..,"end_ms":..}

Usage: python_failover_producer.py ACCESS_POINT TOPIC PRODUCERS DURATION_S [RATE]
ACCESS_POINT may be the client's list, "host:port;host:port". With RATE, each producer
sends at most RATE messages per second (scripts/multihost.sh keeps its load gentle so).
Body of a message is b"p<P>-s<S>". Producers stop at DURATION_S or when standard input
closes, whichever comes first; exits by itself at most 30 s after DURATION_S.
"""

import os
import sys
import threading
import time

from failover_driver import emit, error_text, now_ms, stop, watch_stop
from rocketmq import ClientConfiguration, Credentials, Message, Producer


def run_producer(p: int, access_point: str, topic: str, until: float, rate: float) -> None:
    config = ClientConfiguration(access_point, Credentials())
    producer = Producer(config, (topic,))
    try:
        producer.startup()
    except Exception as e:  # noqa: BLE001 - report every failure
        emit({"producer": p, "event": "start_failed", "error": error_text(e)})
        return
    emit({"producer": p, "event": "started", "at_ms": now_ms()})
    seq = 0
    next_at = time.monotonic()
    try:
        while time.monotonic() < until and not stop.is_set():
            if rate > 0:
                pause = next_at - time.monotonic()
                if pause > 0:
                    stop.wait(pause)
                    continue
                next_at = max(next_at + 1.0 / rate, time.monotonic() - 1.0)
            msg = Message()
            msg.topic = topic
            msg.body = f"p{p}-s{seq}".encode()
            msg.tag = "failover"
            start_ms = now_ms()
            try:
                receipt = producer.send(msg)
                emit({"producer": p, "seq": seq, "ok": True, "message_id": receipt.message_id,
                      "start_ms": start_ms, "end_ms": now_ms()})
            except Exception as e:  # noqa: BLE001 - report every failure
                emit({"producer": p, "seq": seq, "ok": False, "error": error_text(e),
                      "start_ms": start_ms, "end_ms": now_ms()})
            seq += 1
    finally:
        # Shutdown may wait on a dead endpoint: run it aside and do not wait long.
        t = threading.Thread(target=producer.shutdown, daemon=True)
        t.start()
        t.join(5)
        emit({"producer": p, "event": "stopped", "at_ms": now_ms(), "sends": seq})


def main() -> int:
    access_point, topic = sys.argv[1], sys.argv[2]
    producers, duration = int(sys.argv[3]), float(sys.argv[4])
    rate = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    until = time.monotonic() + duration

    watch_stop("python_failover_producer", duration)
    threads = [threading.Thread(target=run_producer, args=(p, access_point, topic, until, rate))
               for p in range(producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
