"""Sends COUNT messages to TOPIC through ACCESS_POINT with the official
RocketMQ 5 Python client and prints one JSON line per receipt.

Usage: python_producer.py ACCESS_POINT TOPIC COUNT [ACCESS_KEY SECRET_KEY]
With ACCESS_KEY and SECRET_KEY the requests are signed (brokers with ACL on).
Body of message i is b"compat-<i>"; exit status 1 if any send failed.
"""

import json
import sys

from rocketmq import ClientConfiguration, Credentials, Message, Producer


def main() -> int:
    access_point, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    credentials = Credentials(sys.argv[4], sys.argv[5]) if len(sys.argv) > 5 else Credentials()
    config = ClientConfiguration(access_point, credentials)
    producer = Producer(config, (topic,))
    producer.startup()
    failures = 0
    try:
        for i in range(count):
            msg = Message()
            msg.topic = topic
            msg.body = f"compat-{i}".encode()
            msg.tag = "compat"
            msg.keys = f"key-{i}"
            msg.add_property("index", str(i))
            try:
                receipt = producer.send(msg)
                print(json.dumps({"i": i, "message_id": receipt.message_id, "offset": receipt.offset}), flush=True)
            except Exception as e:  # noqa: BLE001 - report every failure
                failures += 1
                print(json.dumps({"i": i, "error": str(e)}), flush=True)
    finally:
        producer.shutdown()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
