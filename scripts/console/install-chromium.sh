#!/usr/bin/env bash
# Installs headless Chromium and chromedriver for the console browser tests
# (crates/cli/tests/console_browser.rs). Debian/Ubuntu only; idempotent.
# Exit 0 when both are on PATH afterwards, 1 otherwise (the test then skips with a reason).
set -u
have() { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }
if have; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-chromium: no apt-get on this machine" >&2; exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "install-chromium: not root and no passwordless sudo" >&2; exit 1; fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
have || { echo "install-chromium: chromium/chromedriver still missing after apt-get" >&2; exit 1; }
