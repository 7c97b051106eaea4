#!/bin/sh
# Make Debian's Chromium available for the dashboard's browser tests (Playwright drives it via
# executable_path; `playwright install` is never used). Idempotent and quiet; always exits 0:
# the tests skip with a clear message when no Chromium is found afterwards.
#   usage: tests/browser/install_chromium.sh        (env CHROMIUM=/path skips the install)
for c in "${CHROMIUM:-}" /usr/bin/chromium /usr/bin/chromium-browser; do
    if [ -n "$c" ] && [ -x "$c" ]; then
        exit 0
    fi
done
if [ "$(id -u)" != "0" ]; then
    echo "install_chromium.sh: Chromium missing and not root; run: sudo apt-get install -y chromium" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium.sh: Chromium missing and no apt-get on this machine" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# Try without refreshing the package lists first (fast, works offline against a local mirror).
if ! apt-get -o DPkg::Lock::Timeout=300 install -y -q chromium >/dev/null 2>&1; then
    apt-get -o DPkg::Lock::Timeout=300 update -q >/dev/null 2>&1 || true
    apt-get -o DPkg::Lock::Timeout=300 install -y -q chromium >/dev/null 2>&1 \
        || echo "install_chromium.sh: apt-get install chromium failed" >&2
fi
exit 0
