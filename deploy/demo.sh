#!/usr/bin/env bash
# ztmesh demo in network namespaces: a server and three nodes (client, web, db)
# on a private bridge, a policy, one allowed and one denied connection, and a
# node's status. Cleans everything up on exit.
#
#   sudo deploy/demo.sh           # keeps the lab running until Ctrl-C
#   sudo deploy/demo.sh --once    # shows the demo, then cleans up and exits
#   ZTMESH_DEMO_NO_BUILD=1 ...    # skip `cargo build` (use an existing binary / ZTMESH_BIN)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "demo.sh: must run as root (it creates network namespaces and TUN devices)." >&2
    echo "         run: sudo -E $0 $*" >&2
    exit 1
fi

if [ "${ZTMESH_DEMO_NO_BUILD:-}" != 1 ] && [ -z "${ZTMESH_BIN:-}" ]; then
    echo "==> cargo build --workspace"
    cargo build --workspace
fi
exec python3 deploy/demo.py "$@"
