#!/usr/bin/env bash
# The whole test suite: installs the system tools the tests use when they are
# missing (poppler-utils to read PDFs, Python's aiosmtpd as a real SMTP
# server, the official FHIR R4 examples from npm), checks that the generated
# FHIR tables are current, then runs `cargo test --workspace`, then hale-store's
# tests with the `sqlcipher` feature (encryption at rest; libssl-dev), then the
# browser tests (tests/browser, headless Chromium), then the packaging test
# (tools/test-deb.sh: the .deb in a fresh Debian root). Extra arguments go to
# the workspace's cargo test.
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

# The official FHIR R4 examples (npm package hl7.fhir.r4.examples 4.0.1): every
# one is loaded through the REST API, and each type is driven through create,
# read, search and delete (crates/hale-server/tests/examples.rs).
EXAMPLES_DIR="target/fhir/hl7.fhir.r4.examples-4.0.1"
if [ ! -f "$EXAMPLES_DIR/package/Patient-example.json" ]; then
  echo "== installing the FHIR R4 examples (npm hl7.fhir.r4.examples@4.0.1)"
  mkdir -p "$EXAMPLES_DIR"
  ( cd "$EXAMPLES_DIR" && npm pack --silent hl7.fhir.r4.examples@4.0.1 >/dev/null && tar xzf hl7.fhir.r4.examples-4.0.1.tgz )
fi
export HALE_R4_EXAMPLES="$PWD/$EXAMPLES_DIR/package"

# A real OpenID provider (npm oidc-provider, pinned in tests/oidc/package-lock.json)
# that crates/hale-server/tests/oidc.rs and crates/hale-ui/tests/oidc_signin.rs start on loopback.
echo "== installing the test OpenID provider (tests/oidc)"
( cd tests/oidc && npm ci --no-audit --no-fund --silent )

# Generated FHIR tables must match the official definitions they come from.
python3 tools/gen_fhir_defs.py --check
python3 tools/gen_fhir_schema_subset.py --check

# --no-fail-fast: one failing test binary must not hide the others; the
# browser stage runs too, and the script fails at the end if anything failed.
status=0
cargo test --workspace --no-fail-fast "$@" || status=$?

# Encryption at rest: hale-store built with the `sqlcipher` feature (SQLCipher
# from source, the system's OpenSSL libcrypto), in its own target directory so
# the workspace's default build is not rebuilt around it. Its tests: every
# file under a data directory scanned for NHS numbers, wrong and missing keys.
if ! pkg-config --exists openssl 2>/dev/null; then
  echo "== installing libssl-dev and pkg-config (OpenSSL's libcrypto, for SQLCipher)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libssl-dev pkg-config
fi
echo "== encryption at rest (hale-store --features sqlcipher): lint, then tests"
# The feature's own code (hale-store's db.rs and its test) is linted like the rest.
CARGO_TARGET_DIR=target/sqlcipher cargo clippy -p hale-store --features sqlcipher --all-targets \
  -- -D warnings || status=$?
CARGO_TARGET_DIR=target/sqlcipher cargo test -p hale-store --features sqlcipher --no-fail-fast \
  --lib --test sqlcipher || status=$?

# Browser stage: the staff web UI in headless Chromium (system package, driven
# by playwright-core; axe-core for accessibility). See tests/browser/.
if [ ! -x /usr/bin/chromium ]; then
  echo "== installing chromium (headless browser for the UI tests)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver fonts-liberation
fi
echo "== browser tests (tests/browser)"
( cd tests/browser && npm ci --no-audit --no-fund )
cargo build -p hale
( cd tests/browser && HALE_BIN="$PWD/../../target/debug/hale" node --test --test-concurrency=1 ) || status=$?

# Packaging stage: the .deb (cargo deb, from the debug binary built above)
# installed in a fresh Debian root, its unit's ExecStart started as the unit
# says, `hale doctor` passing, then purged. See tools/test-deb.sh.
echo "== packaging (tools/test-deb.sh)"
if [ "$(id -u)" = 0 ]; then
  bash tools/test-deb.sh || status=$?
else
  sudo --preserve-env=PATH,HALE_TEST_TIMEOUT_SCALE bash tools/test-deb.sh || status=$?
fi
if [ "$status" != 0 ]; then
  echo "error: the test suite failed (see the failures above; cargo test prints a list at its end)" >&2
fi
exit "$status"
