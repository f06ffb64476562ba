"""What the failover drivers (python_failover_producer.py, python_failover_consumer.py)
share: one JSON line per event on standard output, error text, and the two ways a driver
stops (standard input closes, or a hard deadline past its duration)."""

import json
import os
import sys
import threading
import time

_out = threading.Lock()
stop = threading.Event()


def emit(obj) -> None:
    line = json.dumps(obj)
    with _out:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def now_ms() -> int:
    return int(time.time() * 1000)


def error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def watch_stop(name: str, duration: float) -> None:
    """Sets `stop` when standard input closes; exits the process (status 3) 30 s past
    `duration` whatever happens."""

    def hard_stop() -> None:
        time.sleep(duration + 30)
        sys.stderr.write(f"{name}: hard deadline reached, exiting\n")
        sys.stderr.flush()
        os._exit(3)

    def stdin_watch() -> None:
        sys.stdin.buffer.read()
        stop.set()

    threading.Thread(target=hard_stop, daemon=True).start()
    threading.Thread(target=stdin_watch, daemon=True).start()
