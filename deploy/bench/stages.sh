#!/usr/bin/env bash
# Stages of a ping round trip, timed from scheduler and system call tracepoints
# (perf), ztmesh against boringtun-cli. See README.md here.
#
#   sudo deploy/bench/stages.sh [--only ztmesh,boringtun-t1] [--pings 200]
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" != 0 ]; then
    echo "stages.sh: must run as root (it creates network namespaces and TUN devices)." >&2
    echo "           run: sudo -E $0 $*" >&2
    exit 1
fi
PYTHONDONTWRITEBYTECODE=1 exec python3 deploy/bench/stages.py "$@"
