#!/usr/bin/env bash
# The project's one test command: formatting, lints, unit/integration tests
# (with a throwaway PostgreSQL), the network-namespace scenario test, then
# the release build and the check of its code layout list.
#
#   tests/run-all.sh
#
# Every step runs even when an earlier one failed (except the netns test,
# which needs a successful build); the exit status is non-zero if any step
# failed. PostgreSQL is always stopped and removed at exit.
# Env: CI (set -> netns skip is a failure), ZTMESH_SKIP_NETNS=1 (skip that step).
set -uo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)

if [ ! -t 1 ]; then
    export CARGO_TERM_COLOR=never
fi
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

declare -a SUMMARY=()
FAILED=0
PG_DIR=""

cleanup() {
    if [ -n "$PG_DIR" ]; then
        tests/pg/postgres.sh stop "$PG_DIR" || true
        PG_DIR=""
        unset ZTMESH_TEST_DATABASE_URL
    fi
}
trap cleanup EXIT
trap 'echo "run-all: interrupted" >&2; exit 130' INT TERM

# step NAME CMD...: header, run, time, record
step() {
    local name=$1; shift
    local t0 rc
    echo
    echo "==> [$name] $*"
    t0=$(date +%s)
    "$@"
    rc=$?
    local dt=$(( $(date +%s) - t0 ))
    if [ "$rc" -eq 0 ]; then
        echo "<== [$name] ok (${dt}s)"
        SUMMARY+=("ok      ${dt}s  $name")
    else
        echo "<== [$name] FAILED with exit $rc (${dt}s)"
        SUMMARY+=("FAILED  ${dt}s  $name (exit $rc)")
        FAILED=1
    fi
    return "$rc"
}

skip_step() {
    echo
    echo "==> [$1] skipped: $2"
    SUMMARY+=("skipped     $1 ($2)")
}

system_packages() {
    # The netns tests need iproute2, python3 (ICMP is done in Python, so no
    # `ping`) and nftables (the NAT routers); PostgreSQL is installed on
    # demand by tests/pg/postgres.sh. util-linux also gives `prlimit` (the
    # open-file limit test); binutils gives `nm` (the code layout check).
    local missing=()
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    command -v nft >/dev/null 2>&1 || missing+=(nftables)
    { command -v runuser && command -v prlimit; } >/dev/null 2>&1 || missing+=(util-linux)
    command -v nm >/dev/null 2>&1 || missing+=(binutils)
    if [ ${#missing[@]} -eq 0 ]; then
        echo "nothing to install"
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        echo "missing packages ${missing[*]} and not root: install them by hand" >&2
        return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -qq && timeout 900 apt-get install -y -qq "${missing[@]}"
}

start_postgres() {
    local url dirfile
    dirfile=$(mktemp)
    url=$(ZTMESH_PG_DIR_FILE="$dirfile" timeout 1200 tests/pg/postgres.sh start)
    local rc=$?
    PG_DIR=$(cat "$dirfile" 2>/dev/null || true)
    rm -f "$dirfile"
    if [ "$rc" -ne 0 ] || [ -z "$url" ]; then
        echo "PostgreSQL did not start; PostgreSQL-backed tests will not run" >&2
        return 1
    fi
    export ZTMESH_TEST_DATABASE_URL=$url
    echo "ZTMESH_TEST_DATABASE_URL=$url"
}

netns_test() {
    if [ -n "${CI:-}" ]; then
        export ZTMESH_REQUIRE_NETNS=1
    fi
    # namespaces left behind by an earlier, killed run (only those whose creator is gone)
    python3 tests/netns/lab.py cleanup-stale || true
    # SIGTERM on overrun: the lab's handler tears everything down. Both
    # scenarios run even when the first fails; the step fails if either did.
    local rc=0
    timeout -k 20 300 python3 tests/netns/test_overlay.py || rc=1
    timeout -k 20 360 python3 tests/netns/test_nat.py || rc=1
    return $rc
}

LOCKED=()
[ -f Cargo.lock ] && LOCKED=(--locked)

T_START=$(date +%s)
step "system packages" system_packages
step "cargo fmt" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --workspace --all-targets "${LOCKED[@]}" -- -D warnings
step "postgresql" start_postgres
step "cargo test" cargo test --workspace "${LOCKED[@]}"
# The benchmark tools' trace analysis, on hand-made traces (no root, no perf).
step "bench tool tests" python3 -m unittest discover -s deploy/bench -p 'test_*.py'
# Figures, not pass/fail: revocation latency over 50 daemons (p50/p99).
step "revocation benchmark" timeout -k 10 300 cargo run -q -p ztmesh-e2e "${LOCKED[@]}" --example revocation_latency 50 10
# Daemon memory at start and per peer (200 peers here; 1000 by hand, about 2 minutes to enroll).
step "memory benchmark" timeout -k 10 300 cargo run -q -p ztmesh-e2e "${LOCKED[@]}" --example daemon_memory 200
cleanup
if step "cargo build" cargo build --workspace "${LOCKED[@]}"; then
    if [ "${ZTMESH_SKIP_NETNS:-}" = 1 ] && [ -z "${CI:-}" ]; then
        skip_step "netns test" "ZTMESH_SKIP_NETNS=1"
    else
        step "netns test" netns_test
    fi
else
    skip_step "netns test" "the build failed"
    FAILED=1
fi

# The release build's code layout (crates/cli/hot-path.order) names
# functions it still has: the linker skips a missing one without a word.
if step "release build" cargo build --release -p ztmesh "${LOCKED[@]}"; then
    step "code layout list" python3 deploy/bench/footprint.py --check-order target/release/ztmesh
else
    skip_step "code layout list" "the release build failed"
fi

echo
echo "==> summary ($(( $(date +%s) - T_START ))s in all)"
printf '    %s\n' "${SUMMARY[@]}"
if [ "$FAILED" -ne 0 ]; then
    echo "run-all: FAILED"
    exit 1
fi
echo "run-all: all steps ok"
