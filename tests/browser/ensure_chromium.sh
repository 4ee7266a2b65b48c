#!/usr/bin/env bash
# Make sure Debian's headless Chromium and its chromedriver (and a font, so that screenshots
# show text) are installed, for the Flower browser test. `make test` calls this; it returns
# at once when both are already there.
# Installing needs root (as on CI and developer machines here) and a reachable Debian mirror.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
DRIVER=/usr/bin/chromedriver

if [[ -x "$CHROMIUM" && -x "$DRIVER" ]]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: no apt-get here; install chromium and chromedriver yourself" >&2
    exit 1
fi
SUDO=""
if [[ "$(id -u)" != 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
        echo "ensure_chromium: need root to apt-get install chromium chromium-driver" >&2
        exit 1
    fi
fi
echo "ensure_chromium: installing chromium and chromium-driver with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
# The package lists may be missing or stale on a fresh machine: refresh them first.
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core \
    >/dev/null
"$CHROMIUM" --version >&2
"$DRIVER" --version >&2
