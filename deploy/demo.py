#!/usr/bin/env python3
"""The namespace demo (see demo.sh). Uses tests/netns/lab.py."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "netns"))
from lab import Lab, LabError, Skip, wait_for  # noqa: E402

POLICY = (Path(__file__).resolve().parent / "example-policy.toml").read_text()

TAGS = {"n1": "client", "n2": "web", "n3": "db"}


def human_status(st: dict) -> str:
    out = [f"node {st.get('name')}  addresses {', '.join(st.get('addresses') or [])}  "
           f"udp/{st.get('listen_port')}",
           f"  control connected: {'yes' if st.get('control_connected') else 'no'}   "
           f"policy version: {st.get('policy_version')}   "
           f"accepted inbound: {st.get('accepted_inbound')}",
           "  peers:"]
    peers = st.get("peers") or []
    if not peers:
        out.append("    (none)")
    for p in peers:
        hs = p.get("last_handshake_secs")
        hs_s = "never" if hs is None else f"{hs}s ago"
        out.append(f"    {p.get('name', '?'):<8} {','.join(p.get('allowed_ips') or []):<18} "
                   f"endpoint {p.get('endpoint') or '-':<18} handshake {hs_s:<9} "
                   f"rx {p.get('rx_bytes', 0)} B  tx {p.get('tx_bytes', 0)} B")
    drops = st.get("drops") or {}
    nz = {k: v for k, v in drops.items() if v}
    out.append("  drops: " + (", ".join(f"{k}={v}" for k, v in nz.items()) if nz else "none"))
    hits = st.get("rule_hits") or {}
    out.append("  new flows by rule: " + (", ".join(f"{k}={v}" for k, v in hits.items()) if hits else "none"))
    return "\n".join(out)


def verdict(ok: bool, why_denied: str) -> str:
    return "ALLOWED" if ok else f"DENIED ({why_denied})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--once", action="store_true", help="exit (and clean up) after the demo")
    args = ap.parse_args()
    try:
        with Lab(nodes=list(TAGS), verbose=False) as lab:
            print("==> starting the coordination server in namespace", lab.server_ns)
            lab.start_server()
            for n, tag in TAGS.items():
                print(f"==> enrolling {n} (tag {tag}) in namespace {lab.node_ns[n]}")
                lab.start_node(n, lab.create_token([tag]))
            lab.wait_connected(list(TAGS), timeout=60)
            ip = {n: lab.overlay_ip(n) for n in TAGS}
            for n in TAGS:
                print(f"    {n}: overlay {ip[n]}, underlay {lab.underlay_ip[n]}")

            print("==> applying policy: clients -> web (tcp/80, icmp), web -> db (tcp/5432)")
            lab.set_policy(POLICY)

            ok = wait_for(lambda: lab.tcp_check("n1", "n2", ip["n2"], 80), 20)
            print(f"n1 -> n2 tcp/80:   {verdict(bool(ok), 'unexpected')}")
            ok = wait_for(lambda: lab.tcp_check("n2", "n3", ip["n3"], 5432), 10)
            print(f"n2 -> n3 tcp/5432: {verdict(bool(ok), 'unexpected')}")
            ok = lab.tcp_check("n3", "n2", ip["n2"], 80)
            print(f"n3 -> n2 tcp/80:   {verdict(ok, 'dropped by n2: no rule lets db open flows to web')}")
            ok = lab.tcp_check("n1", "n3", ip["n3"], 5432)
            print(f"n1 -> n3 tcp/5432: {verdict(ok, 'no tunnel: the policy gives clients no path to db')}")

            print("\n==> ztmesh status on n2 (see its drop counters)")
            print(human_status(lab.status("n2")))

            if args.once:
                print("\n==> --once: cleaning up")
                return 0
            print("\nThe lab is running. Try, in another shell:")
            print(f"    sudo ip netns exec {lab.node_ns['n1']} {lab.binary()} status "
                  f"--state-dir {lab.state_dir('n1')}")
            print(f"    sudo ip netns exec {lab.node_ns['n1']} bash   # a shell on n1")
            print("Press Ctrl-C to stop and clean up.")
            while True:
                for name, p in list(lab.nodes.items()) + [("server", lab.server)]:
                    if p is not None and not p.alive():
                        print(f"{name} exited with {p.popen.returncode}; stopping")
                        lab.dump_logs(40)
                        return 1
                time.sleep(1)
    except Skip as e:
        print(f"demo: cannot run here: {e}", file=sys.stderr)
        return 1
    except LabError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopped; namespaces and processes cleaned up")
        return 0


if __name__ == "__main__":
    sys.exit(main())
