#!/usr/bin/env bash
# The whole test suite: installs the system tools the tests use when they are
# missing (poppler-utils to read PDFs, Python's aiosmtpd as a real SMTP
# server), then runs `cargo test --workspace`. Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi

# poppler-utils: pdftotext/pdftoppm read the downtime packs' PDFs in tests.
if ! command -v pdftotext >/dev/null 2>&1 || ! command -v pdftoppm >/dev/null 2>&1; then
  echo "== installing poppler-utils (pdftotext, pdftoppm)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq poppler-utils
fi
# aiosmtpd: the real SMTP server that the notification tests start and read mail back from.
if ! python3 -c "import aiosmtpd" >/dev/null 2>&1; then
  echo "== installing Python's aiosmtpd"
  python3 -m pip install --quiet aiosmtpd 2>/dev/null \
    || python3 -m pip install --quiet --user --break-system-packages aiosmtpd 2>/dev/null \
    || { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-aiosmtpd; }
  if ! python3 -c "import aiosmtpd" >/dev/null 2>&1; then
    echo "error: could not install Python's aiosmtpd; the SMTP tests need it" >&2
    exit 1
  fi
fi

cargo test --workspace "$@"
