"""Rate-limited load of the official RocketMQ 5 Python client for scripts/multihost.sh.

Like scripts/compat/python_failover_producer.py (whose helpers it reuses), but each of the
PRODUCERS producers sends at most RATE messages per second, so the load stays gentle on a
small machine. One JSON line per send on standard output:

  {"producer":P,"seq":S,"ok":true,"message_id":"..","start_ms":..,"end_ms":..}
  {"producer":P,"seq":S,"ok":false,"error":"..","start_ms":..,"end_ms":..}

Usage: official_producer.py ACCESS_POINTS TOPIC PRODUCERS RATE DURATION_S
ACCESS_POINTS is the client's list, "host:port;host:port;...". Body: b"p<P>-s<S>".
Stops when standard input closes or at DURATION_S (hard exit 30 s after it).
"""

import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "compat"))

from failover_driver import emit, error_text, now_ms, stop, watch_stop  # noqa: E402
from rocketmq import ClientConfiguration, Credentials, Message, Producer  # noqa: E402


def run_producer(p: int, access_points: str, topic: str, rate: float, until: float) -> None:
    producer = Producer(ClientConfiguration(access_points, Credentials()), (topic,))
    try:
        producer.startup()
    except Exception as e:  # noqa: BLE001 - report every failure
        emit({"producer": p, "event": "start_failed", "error": error_text(e)})
        return
    emit({"producer": p, "event": "started", "at_ms": now_ms()})
    period = 1.0 / rate
    next_at = time.monotonic()
    seq = 0
    try:
        while time.monotonic() < until and not stop.is_set():
            next_at += period
            msg = Message()
            msg.topic = topic
            msg.body = f"p{p}-s{seq}".encode()
            msg.tag = "multihost"
            start_ms = now_ms()
            try:
                receipt = producer.send(msg)
                emit({"producer": p, "seq": seq, "ok": True, "message_id": receipt.message_id,
                      "start_ms": start_ms, "end_ms": now_ms()})
            except Exception as e:  # noqa: BLE001 - report every failure
                emit({"producer": p, "seq": seq, "ok": False, "error": error_text(e),
                      "start_ms": start_ms, "end_ms": now_ms()})
            seq += 1
            pause = next_at - time.monotonic()
            if pause > 0:
                stop.wait(pause)
            else:
                next_at = time.monotonic()
    finally:
        t = threading.Thread(target=producer.shutdown, daemon=True)
        t.start()
        t.join(5)
        emit({"producer": p, "event": "stopped", "at_ms": now_ms(), "sends": seq})


def main() -> int:
    access_points, topic = sys.argv[1], sys.argv[2]
    producers, rate, duration = int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
    until = time.monotonic() + duration
    watch_stop("official_producer", duration)
    threads = [threading.Thread(target=run_producer, args=(p, access_points, topic, rate, until))
               for p in range(producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
