#!/usr/bin/env bash
# Packaging test: the .deb installs in a clean Debian root, the unit starts,
# and `hale doctor` passes. Run by tools/test.sh after `cargo test`, whose
# debug binary it packages (a release build would take longer than CI allows).
#
#  1. `cargo deb -p hale --no-build` (cargo-deb, pinned below, installed with
#     `cargo install --locked` if missing) packages target/debug/hale, staged
#     as a release binary in its own target dir and stripped, with the unit,
#     maintainer scripts and default config of packaging/debian/.
#  2. A fresh minimal Debian root (mmdebstrap --variant=minbase, the host's
#     suite, plus `adduser`), made with mmdebstrap run from its .deb, unpacked
#     here: nothing is installed on the host.
#  3. In new mount, PID and network namespaces (so nothing can leak onto the
#     host, and every process ends with the namespace), chrooted into that root:
#     `dpkg -i`; the user, permissions, conffile and enablement are checked;
#     `systemd-analyze verify` and `security` on the installed unit; the shipped
#     config is refused until sign-in is configured; then, after configuring a
#     token as README "Install on Debian or Ubuntu" says, the unit's ExecStart
#     runs as systemd would start it (its User and Group, no capabilities, no new
#     privileges, its UMask and environment) and `hale doctor` must pass;
#     SIGTERM stops it; `dpkg --purge` removes it.
#
# No systemd runs here (no PID 1 systemd, no container runtime), so the unit's
# sandbox (ProtectSystem=, SystemCallFilter=, ...) is checked by systemd-analyze
# but not enforced while the node runs.
#
# Environment: HALE_BIN (default target/debug/hale), HALE_DEB_SUITE (default:
# the host's VERSION_CODENAME), HALE_DEB_MIRROR (default
# http://deb.debian.org/debian), HALE_TEST_TIMEOUT_SCALE (stretches the waits).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

CARGO_DEB_VERSION=3.8.0
BIN="${HALE_BIN:-target/debug/hale}"
WORK="$REPO/target/deb-test"
ROOT="$WORK/root"
SCALE="${HALE_TEST_TIMEOUT_SCALE:-1}"

step() { echo "== packaging: $*"; }
fail() { echo "error: packaging: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "needs root (chroot, namespaces, dpkg into the test root)"
for tool in unshare chroot dpkg-deb apt-get ip curl systemd-analyze; do
  command -v "$tool" >/dev/null 2>&1 || fail "needs $tool"
done
[ -x "$BIN" ] || fail "$BIN is missing: run cargo test (or cargo build -p hale) first"

# ------------------------------------------------------------------ the .deb
if ! cargo deb --version 2>/dev/null | grep -qx "cargo-deb $CARGO_DEB_VERSION"; then
  step "installing cargo-deb $CARGO_DEB_VERSION (cargo install --locked)"
  cargo install --locked --quiet "cargo-deb@$CARGO_DEB_VERSION"
fi

# Leftovers of an earlier run: a root whose namespace is gone has no mounts.
rm -rf "$WORK"
mkdir -p "$WORK/target/release"
# cargo-deb takes binaries from <target dir>/release: stage the test suite's
# binary there (a hard link: cargo-deb strips a copy), in a target dir of its
# own (target/release stays untouched).
ln -f "$BIN" "$WORK/target/release/hale" 2>/dev/null || cp "$BIN" "$WORK/target/release/hale"
step "cargo deb -p hale --no-build (the test suite's binary, stripped)"
CARGO_TARGET_DIR="$WORK/target" cargo deb -p hale --no-build --strip --fast \
  --output "$WORK/hale.deb" >"$WORK/cargo-deb.log" 2>&1 \
  || { cat "$WORK/cargo-deb.log" >&2; fail "cargo deb failed"; }
DEB="$WORK/hale.deb"
dpkg-deb --info "$DEB" | sed -n 's/^ \(Package\|Version\|Depends\|Installed-Size\):/  &/p'
contents="$(dpkg-deb --contents "$DEB")"
for f in ./usr/bin/hale ./usr/lib/systemd/system/hale.service ./etc/hale/hale.toml ./usr/share/doc/hale/README.md; do
  grep -q " $f\$" <<<"$contents" || fail "the package lacks $f"
done
dpkg-deb --ctrl-tarfile "$DEB" | tar -xO ./conffiles | grep -qx /etc/hale/hale.toml \
  || fail "/etc/hale/hale.toml is not a conffile"

# ------------------------------------------------------------- a clean root
# mmdebstrap from its .deb, unpacked into target/: the host gets nothing installed.
SUITE="${HALE_DEB_SUITE:-$(. /etc/os-release && echo "${VERSION_CODENAME:-}")}"
MIRROR="${HALE_DEB_MIRROR:-http://deb.debian.org/debian}"
[ -n "$SUITE" ] || fail "cannot tell the host's Debian suite; set HALE_DEB_SUITE"
mkdir -p "$WORK/mmdebstrap"
if ! (cd "$WORK/mmdebstrap" && apt-get download -q -o APT::Sandbox::User=root mmdebstrap >/dev/null 2>&1); then
  apt-get update -qq
  (cd "$WORK/mmdebstrap" && apt-get download -q -o APT::Sandbox::User=root mmdebstrap >/dev/null)
fi
dpkg-deb -x "$WORK"/mmdebstrap/mmdebstrap_*.deb "$WORK/mmdebstrap/x"
# The package's own Depends (names only: dpkg -i checks the versions), and
# systemd, as on any Debian server (systemd-analyze verify needs its targets).
DEPENDS="$(dpkg-deb --field "$DEB" Depends | tr ',' '\n' | sed 's/^ *//; s/[ (].*//' | grep -v '^$' | tr '\n' ',')"
INCLUDE="${DEPENDS}systemd"
step "a fresh $SUITE root (mmdebstrap --variant=minbase --include=$INCLUDE)"
started=$SECONDS
unshare --mount --propagation private \
  "$WORK/mmdebstrap/x/usr/bin/mmdebstrap" --quiet --mode=root --variant=minbase --include="$INCLUDE" \
  "$SUITE" "$ROOT" "$MIRROR" >"$WORK/mmdebstrap.log" 2>&1 \
  || { tail -30 "$WORK/mmdebstrap.log" >&2; fail "mmdebstrap failed"; }
echo "  root made in $((SECONDS - started)) s ($(du -sh "$ROOT" | cut -f1))"
cp "$DEB" "$ROOT/tmp/hale.deb"
mkdir -p "$WORK/logs"

# What the host looks like now; the same afterwards, or the test fails.
host_state() {
  getent passwd hale || true
  getent group hale || true
  dpkg-query -W -f='${Package} ${Status}\n' hale 2>/dev/null || true
  ls -ld /etc/hale /var/lib/hale /usr/bin/hale /usr/lib/systemd/system/hale.service 2>/dev/null || true
  grep -c " $ROOT" /proc/self/mountinfo || true
}
host_state >"$WORK/host-before"

# ------------------------------------------- install, start, doctor, purge
# Runs as PID 1 of new mount, PID and network namespaces: when it exits, every
# process in them (the node included) is killed, and its mounts vanish.
cat >"$WORK/inside.sh" <<'INSIDE'
set -euo pipefail
ROOT="$1" SCALE="$2" LOGS="$3"
fail() { echo "error: packaging: $*" >&2; exit 1; }
step() { echo "== packaging: $*"; }
in_root() { chroot "$ROOT" "$@"; }
mount -t proc proc "$ROOT/proc"
mount -t tmpfs -o mode=755 tmpfs "$ROOT/run"
ip link set lo up

step "dpkg -i hale.deb in the fresh root"
in_root dpkg -i /tmp/hale.deb
[ "$(in_root dpkg-query -W -f='${Status}' hale)" = "install ok installed" ] || fail "hale is not installed"

# What postinst made: a system user without a login, and the permissions.
IFS=: read -r _ _ uid _ _ home shell < <(in_root getent passwd hale) || fail "postinst made no hale user"
[ "$uid" -lt 1000 ] && [ "$home" = /var/lib/hale ] && [ "$shell" = /usr/sbin/nologin ] \
  || fail "hale is not a system user with home /var/lib/hale and no shell (uid $uid, $home, $shell)"
check_mode() { # path "mode user group"
  local got
  got="$(in_root stat -c '%a %U %G' "$1")"
  [ "$got" = "$2" ] || fail "$1 is $got, expected $2"
}
check_mode /etc/hale "750 root hale"
check_mode /etc/hale/hale.toml "640 root hale"
check_mode /var/lib/hale "700 hale hale"
[ -L "$ROOT/etc/systemd/system/multi-user.target.wants/hale.service" ] \
  || fail "postinst did not enable hale.service (no multi-user.target.wants link)"
echo "  user hale (uid $uid), /etc/hale 0750 root:hale, hale.toml 0640 root:hale, /var/lib/hale 0700 hale:hale, hale.service enabled"

UNIT="$ROOT/usr/lib/systemd/system/hale.service"
step "systemd-analyze verify and security on the installed unit"
systemd-analyze verify --root="$ROOT" /usr/lib/systemd/system/hale.service
security="$(systemd-analyze security --offline=true --root="$ROOT" --threshold=20 --no-pager hale.service)" \
  || { echo "$security" >&2; fail "the unit's exposure is over 2.0"; }
grep 'Overall exposure level' <<<"$security"

unit_value() { sed -n "s/^$1=//p" "$UNIT" | tail -1; }
EXEC_START="$(unit_value ExecStart)"
SVC_USER="$(unit_value User)"
SVC_GROUP="$(unit_value Group)"
SVC_UMASK="$(unit_value UMask)"
LIMIT_NOFILE="$(unit_value LimitNOFILE)"
[ -n "$EXEC_START" ] && [ -n "$SVC_USER" ] && [ -n "$SVC_GROUP" ] && [ -n "$SVC_UMASK" ] \
  || fail "the unit lacks ExecStart, User, Group or UMask"
# The unit's ExecStart as systemd runs it: its user and group (with the
# user's supplementary groups), no capabilities at all, no new privileges,
# its UMask and file limit (or this machine's hard limit, if lower: only
# systemd may raise it), and systemd's environment for a system service.
# Each program execs the next, so the node keeps the PID started here.
# shellcheck disable=SC2206 # ExecStart is split into words, as systemd splits it
UNIT_CMD=(chroot "$ROOT" /usr/bin/env -i
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin
  HOME=/var/lib/hale USER="$SVC_USER" LOGNAME="$SVC_USER" SHELL=/usr/sbin/nologin
  STATE_DIRECTORY=/var/lib/hale CONFIGURATION_DIRECTORY=/etc/hale
  /bin/sh -c 'cd / && umask "$1" && { ulimit -n "$2" 2>/dev/null || ulimit -n "$(ulimit -Hn)"; } && shift 2 && exec "$@"' sh "$SVC_UMASK" "$LIMIT_NOFILE"
  setpriv --reuid="$SVC_USER" --regid="$SVC_GROUP" --init-groups --no-new-privs
  --inh-caps=-all --ambient-caps=-all --bounding-set=-all
  $EXEC_START)
WAIT_S="$(awk -v s="$SCALE" 'BEGIN { w = int(60 * s); print (w < 60 ? 60 : w) }')"
doctor() { in_root /usr/bin/hale doctor --config /etc/hale/hale.toml --disk-warn-percent 0 --disk-fail-percent 0 "$@"; }

step "the shipped config: everything but sign-in is ready"
set +e
doctor >$LOGS/doctor-unconfigured.txt 2>&1; rc=$?
set -e
cat $LOGS/doctor-unconfigured.txt
[ "$rc" != 0 ] || fail "hale doctor passed a config nobody can sign in with"
grep -q '^FAIL  config .*no way to sign in is configured' $LOGS/doctor-unconfigured.txt \
  || fail "the shipped config should fail only for want of sign-in"
set +e
timeout "$WAIT_S" "${UNIT_CMD[@]}" >$LOGS/serve-unconfigured.txt 2>&1; rc=$?
set -e
[ "$rc" != 0 ] && grep -q "no way to sign in is configured" $LOGS/serve-unconfigured.txt \
  || { cat $LOGS/serve-unconfigured.txt; fail "the unit should refuse to start before sign-in is configured (exit $rc)"; }
echo "  hale serve refuses to start before sign-in is configured, as the README says"

step "configure sign-in (a static admin token on loopback, README \"Install on Debian or Ubuntu\")"
TOKEN="$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
CONF="$ROOT/etc/hale/hale.toml"
sed -i -e 's/^# \[\[auth\.tokens\]\]$/[[auth.tokens]]/' \
  -e "s/^# token = \"PASTE-A-RANDOM-TOKEN-HERE\"\$/token = \"$TOKEN\"/" \
  -e 's/^# user = "first-admin"$/user = "first-admin"/' \
  -e 's/^# role = "admin"$/role = "admin"/' "$CONF"
[ "$(grep -c -e '^\[\[auth\.tokens\]\]$' -e "^token = \"$TOKEN\"\$" -e '^user = "first-admin"$' -e '^role = "admin"$' "$CONF")" = 4 ] \
  || fail "the [[auth.tokens]] block in the shipped hale.toml has changed: update this test and the README"
check_mode /etc/hale/hale.toml "640 root hale"

step "start the unit: $EXEC_START (as $SVC_USER:$SVC_GROUP)"
"${UNIT_CMD[@]}" >$LOGS/hale.log 2>&1 &
node=$!
deadline=$((SECONDS + WAIT_S))
until curl -fsS -o /dev/null http://127.0.0.1:8080/readyz 2>/dev/null; do
  if ! kill -0 "$node" 2>/dev/null; then cat $LOGS/hale.log; fail "hale serve exited before it was ready"; fi
  if [ "$SECONDS" -ge "$deadline" ]; then cat $LOGS/hale.log; fail "not ready within $WAIT_S s"; fi
  sleep 0.5
done
uids="$(awk '/^Uid:/ {print $2, $3, $4, $5}' "$ROOT/proc/$node/status")"
caps="$(awk '/^CapEff:/ {print $2}' "$ROOT/proc/$node/status")"
[ "$uids" = "$uid $uid $uid $uid" ] && [ "$caps" = 0000000000000000 ] \
  || fail "the node runs with uids $uids and capabilities $caps, expected $uid and none"
echo "  ready on 127.0.0.1:8080 as uid $uid, no capabilities"

step "hale doctor --config /etc/hale/hale.toml --token ..."
set +e
doctor --token "$TOKEN" >$LOGS/doctor.txt 2>&1; rc=$?
set -e
cat $LOGS/doctor.txt
[ "$rc" = 0 ] || { cat $LOGS/hale.log; fail "hale doctor failed on the installed node"; }
for check in config node cluster; do
  grep -q "^OK    $check " $LOGS/doctor.txt || fail "doctor's $check check is not OK"
done
# The node wrote its state as the service user, private to it (UMask).
bad="$(in_root find /var/lib/hale -mindepth 1 \( ! -user hale -o -perm /077 \) -print)"
[ -z "$bad" ] || fail "files in /var/lib/hale not owned by hale or readable by others: $bad"

step "stop (SIGTERM, as systemctl stop does)"
kill -TERM "$node"
rc=0; wait "$node" || rc=$?
[ "$rc" = 0 ] || { cat $LOGS/hale.log; fail "hale serve exited with $rc on SIGTERM"; }

step "dpkg --purge hale"
in_root dpkg --purge hale
for gone in /usr/bin/hale /usr/lib/systemd/system/hale.service /etc/hale/hale.toml \
  /etc/systemd/system/multi-user.target.wants/hale.service; do
  [ ! -e "$ROOT$gone" ] && [ ! -L "$ROOT$gone" ] || fail "$gone is left after purge"
done
[ -d "$ROOT/var/lib/hale" ] || fail "purge removed the data directory (it keeps it on purpose)"
echo "  purged; /var/lib/hale and the hale user are kept, as the README says"
INSIDE

step "install, start and check in the fresh root (new mount, PID and network namespaces)"
set +e
unshare --mount --propagation private --pid --fork --net bash "$WORK/inside.sh" "$ROOT" "$SCALE" "$WORK/logs"
status=$?
set -e

host_state >"$WORK/host-after"
if ! diff -u "$WORK/host-before" "$WORK/host-after"; then
  fail "the host changed (above): the test must only touch its own root"
fi
[ "$status" = 0 ] || fail "the installed package failed its checks (above); the root is kept in $ROOT"
rm -rf "$ROOT" "$WORK/target"
step "passed: installed in a fresh $SUITE root, started as the unit does, hale doctor passed, purged; host unchanged"
