#!/usr/bin/env bash
# Side-by-side throughput benchmark: ztmesh, boringtun, gotatun, wireguard-go
# and the bare veth, between two network namespaces. See README.md here.
#
#   sudo deploy/bench/run.sh [--rounds N] [--seconds S] [--only veth,ztmesh,...]
#
# ZTMESH_BIN: the ztmesh binary (default target/release/ztmesh).
# ZTMESH_BENCH_TOOLS: where boringtun-cli and gotatun are installed (default
# /var/cache/ztmesh-bench).
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" != 0 ]; then
    echo "run.sh: must run as root (it creates network namespaces and TUN devices)." >&2
    echo "        run: sudo -E $0 $*" >&2
    exit 1
fi
PYTHONDONTWRITEBYTECODE=1 exec python3 deploy/bench/bench.py "$@"
