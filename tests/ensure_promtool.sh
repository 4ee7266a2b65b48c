#!/usr/bin/env bash
# Make sure promtool is installed (Debian's prometheus package has it), for the checks of
# docs/prometheus/alerts.yml in tests/operator/test_alerting_files.py. `make test` calls this;
# it returns at once when promtool is already on PATH.
#
# Unlike ensure_chromium.sh this never fails: without promtool those tests skip, saying why,
# and everything else still runs. Installing needs root (or passwordless sudo) and a reachable
# Debian mirror.
#
# The package also ships a Prometheus server (a systemd unit and an init script) that its
# postinst starts unless policy-rc.d forbids it. We want only the command, so a policy-rc.d
# that refuses every start is in place while apt-get runs (unless the machine has one already,
# as containers do), and the unit is disabled afterwards: nothing is left listening on 9090.
set -euo pipefail

POLICY=/usr/sbin/policy-rc.d

if command -v promtool >/dev/null 2>&1; then
    exit 0
fi

skip() {
    echo "ensure_promtool: $1; the promtool tests of docs/prometheus/alerts.yml will be skipped" >&2
    exit 0
}

command -v apt-get >/dev/null 2>&1 || skip "no apt-get here (install Prometheus' promtool yourself)"
SUDO=""
if [[ "$(id -u)" != 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
        skip "need root to apt-get install prometheus"
    fi
fi

# Only a policy we wrote is removed again; one that was there stays as it was.
OWN_POLICY=""
cleanup() {
    if [[ -n "$OWN_POLICY" ]]; then $SUDO rm -f "$POLICY"; fi
}
trap cleanup EXIT
if [[ ! -e "$POLICY" ]]; then
    # 101: "action forbidden by policy"; invoke-rc.d and deb-systemd-invoke then start nothing.
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod 755 "$POLICY"
    OWN_POLICY=1
fi

echo "ensure_promtool: installing Debian's prometheus package (for promtool) with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
# The package lists may be missing or stale on a fresh machine: refresh them first.
$SUDO apt-get update -qq >/dev/null 2>&1 || skip "apt-get update failed"
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
    || skip "apt-get install prometheus failed"

# A policy already in place may allow starts, and systemd would start the unit at the next
# boot: stop and disable the server the package brought (it was not installed before, since
# promtool was missing, so whatever runs from it is ours to stop).
if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable --now prometheus.service >/dev/null 2>&1 || true
elif [[ -x /etc/init.d/prometheus ]]; then
    $SUDO /etc/init.d/prometheus stop >/dev/null 2>&1 || true
fi

command -v promtool >/dev/null 2>&1 || skip "the prometheus package installed no promtool"
promtool --version 2>&1 | head -n 1 >&2
