#!/usr/bin/env bash
# Install Debian's chromium and chromium-driver if missing: the operator page and the simulation
# report are tested in this real headless browser (tests/test_page.py, selenium). A browser
# download by selenium or a test framework does not work on these machines; Debian's does.
set -euo pipefail
log() { echo "browser.sh: $*" >&2; }

if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    log "$(chromium --version 2>/dev/null | head -1), $(chromedriver --version | head -1)"
    exit 0
fi
log "installing Debian's chromium and chromium-driver"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq chromium chromium-driver >&2
log "$(chromedriver --version | head -1)"
