"""Consumes COUNT messages of TOPIC as consumer group GROUP with the official
RocketMQ 5 Python PushConsumer (the listener returns SUCCESS, so the client
acks), then waits a few seconds to catch redeliveries. One JSON line per
consumed message, then a summary line {"done": ...}.

Usage: python_push_consumer.py ACCESS_POINT TOPIC GROUP COUNT TIMEOUT_S
"""

import json
import sys
import threading
import time

from rocketmq import (ClientConfiguration, ConsumeResult, Credentials, FilterExpression,
                      MessageListener, PushConsumer)


class Listener(MessageListener):
    def __init__(self):
        self.lock = threading.Lock()
        self.seen = {}

    def consume(self, message):
        with self.lock:
            self.seen[message.message_id] = self.seen.get(message.message_id, 0) + 1
            print(json.dumps({
                "id": message.message_id,
                "body": message.body.decode(errors="replace"),
                "attempt": message.delivery_attempt,
                "corrupted": bool(message.corrupted),
            }), flush=True)
        return ConsumeResult.SUCCESS


def main() -> int:
    access_point, topic, group = sys.argv[1], sys.argv[2], sys.argv[3]
    count, timeout = int(sys.argv[4]), float(sys.argv[5])
    config = ClientConfiguration(access_point, Credentials())
    listener = Listener()
    consumer = PushConsumer(config, group, listener, {topic: FilterExpression("compat")},
                            consumption_thread_count=4)
    consumer.startup()
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            with listener.lock:
                if len(listener.seen) >= count:
                    break
            time.sleep(0.1)
        # Past the invisible duration the client asked for, an un-acked
        # message would come back.
        time.sleep(5)
    finally:
        consumer.shutdown()
    with listener.lock:
        redelivered = sum(n - 1 for n in listener.seen.values())
        done = len(listener.seen)
    print(json.dumps({"done": done, "redelivered": redelivered}), flush=True)
    return 0 if done >= count and redelivered == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
