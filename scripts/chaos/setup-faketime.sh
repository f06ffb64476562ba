#!/usr/bin/env bash
# Finds libfaketime (the LD_PRELOAD library the clock-jump chaos scenario runs every node
# under), installing Debian's libfaketime package first when it is missing and this runs as
# root with apt-get. Idempotent; prints the library's path last.
set -euo pipefail
find_lib() {
  for p in /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 \
           /usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1 \
           /usr/lib/faketime/libfaketime.so.1 /usr/local/lib/faketime/libfaketime.so.1; do
    if [ -f "$p" ]; then echo "$p"; return 0; fi
  done
  return 1
}
if lib=$(find_lib); then echo "$lib"; exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "setup-faketime: installing libfaketime" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q libfaketime >&2 \
    || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q libfaketime >&2; }
fi
if lib=$(find_lib); then echo "$lib"; exit 0; fi
echo "setup-faketime: libfaketime not found and not installable here (needs root and apt-get)" >&2
exit 1
