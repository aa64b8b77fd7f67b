"""What footprint.py and stages.py share: their command line's checks and
the tunnel they bring up and ping through. Stdlib only."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import tools
import tunnels
from netlab import Netlab

REPO = Path(__file__).resolve().parents[2]


def prepare(ap: argparse.ArgumentParser, args: argparse.Namespace, known: list[str], tool: str,
            ensure_extra) -> tuple[list[str], dict[str, str]] | int:
    """The implementations asked for (`args.only`) and their binaries,
    with every tool installed (`ensure_extra` installs the one this tool
    needs); an exit code when something is missing."""
    impls = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [i for i in impls if i not in known]
    if unknown:
        ap.error(f"unknown implementation(s) {unknown}; known: {known}")
    if args.pings < 20:
        ap.error("--pings must be at least 20")
    if os.geteuid() != 0:
        print(f"{tool}: must run as root (namespaces, TUN devices)", file=sys.stderr)
        return 1
    zt = Path(os.environ.get("ZTMESH_BIN") or REPO / "target" / "release" / "ztmesh")
    if "ztmesh" in impls and not (zt.is_file() and os.access(zt, os.X_OK)):
        print(f"{tool}: no ztmesh binary at {zt}; build it with "
              f"`cargo build --release --locked -p ztmesh` or set ZTMESH_BIN", file=sys.stderr)
        return 2
    try:
        bins = tools.ensure(impls)
        ensure_extra()
    except tools.ToolError as e:
        print(f"{tool}: {e}", file=sys.stderr)
        return 2
    bins["ztmesh"] = str(zt)
    return impls, bins


class PingedTunnel:
    """A tunnel between the lab's namespaces, up and answering pings from A;
    `wrap_b` runs the answering side under another program (callgrind)."""

    def __init__(self, lab: Netlab, index: int, impl: str, bins: dict[str, str],
                 wrap_b: tuple[str, ...] = ()):
        self.lab = lab
        lab.say(f"bringing up {impl}" + (", side B under callgrind" if wrap_b else ""))
        if impl == "ztmesh":
            self.t = tunnels.up_ztmesh(lab, index, bins["ztmesh"], wrap_b=wrap_b)
        else:
            self.t = tunnels.up_wireguard(lab, index, tools.WG_IMPLS[impl], bins.get(impl),
                                          wrap_b=wrap_b)
        lab.wait(lambda: lab.run(["ip", "netns", "exec", lab.ns_a, "ping", "-c", "1", "-W", "2",
                                  self.t.dst_ip], timeout=10, check=False).returncode == 0
                 or any(p.dead_error() for p in self.t.procs),
                 120, f"{impl}: a first ping through the tunnel")

    def ping(self, count: int, interval: str) -> None:
        self.lab.run(["ip", "netns", "exec", self.lab.ns_a, "ping", "-q", "-c", str(count),
                      "-i", interval, "-W", "5", self.t.dst_ip], timeout=count * 0.2 + 60)
