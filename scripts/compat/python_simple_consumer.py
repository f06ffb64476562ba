"""Receives and acks COUNT messages of TOPIC as consumer group GROUP with the
official RocketMQ 5 Python SimpleConsumer, then keeps receiving for a few
seconds to catch redeliveries. One JSON line per received message, then a
summary line {"done": ...}.

Usage: python_simple_consumer.py ACCESS_POINT TOPIC GROUP COUNT TIMEOUT_S
"""

import json
import sys
import time

from rocketmq import ClientConfiguration, Credentials, FilterExpression, SimpleConsumer


def main() -> int:
    access_point, topic, group = sys.argv[1], sys.argv[2], sys.argv[3]
    count, timeout = int(sys.argv[4]), float(sys.argv[5])
    config = ClientConfiguration(access_point, Credentials())
    consumer = SimpleConsumer(config, group, {topic: FilterExpression("compat")}, await_duration=2)
    consumer.startup()
    acked = set()
    redelivered = 0
    invisible = 3
    try:
        deadline = time.time() + timeout
        quiet_until = None
        while time.time() < deadline:
            if len(acked) >= count and quiet_until is None:
                # Everything acked: listen past one invisible duration for redeliveries.
                quiet_until = time.time() + invisible + 2
            if quiet_until is not None and time.time() > quiet_until:
                break
            for msg in consumer.receive(32, invisible):
                if msg.message_id in acked:
                    redelivered += 1
                consumer.ack(msg)
                acked.add(msg.message_id)
                print(json.dumps({
                    "id": msg.message_id,
                    "body": msg.body.decode(errors="replace"),
                    "attempt": msg.delivery_attempt,
                    "corrupted": bool(msg.corrupted),
                    "tag": msg.tag,
                }), flush=True)
    finally:
        consumer.shutdown()
    print(json.dumps({"done": len(acked), "redelivered": redelivered}), flush=True)
    return 0 if len(acked) >= count and redelivered == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
