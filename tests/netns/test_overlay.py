#!/usr/bin/env python3
"""Network-namespace scenario test for ztmesh (root, real TUN devices).

Server + three nodes: n1 (tag client), n2 (tag web), n3 (tag db).
Prints `PASS name` / `FAIL name: reason` per check and one closing line
`N passed, N failed`; exits non-zero if any check failed.

When the machine cannot run it (not root, no /dev/net/tun, namespaces
forbidden) it prints `SKIPPED: network-namespace tests: <reason>` and exits 0,
or 1 when ZTMESH_REQUIRE_NETNS=1. A missing binary is a failure.

    sudo python3 tests/netns/test_overlay.py        # after `cargo build`
    ZTMESH_BIN=/path/to/ztmesh ...                   # another binary
    ZTMESH_LAB_KEEP=1 ...                            # keep logs/state dirs
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bulk import tcp_bulk  # noqa: E402
from lab import SERVER_IP, Lab, LabError, Skip, binary_path, wait_for  # noqa: E402

TOTAL_BUDGET = 170  # seconds; the whole test must end well under 3 minutes

POLICY_V1 = (Path(__file__).resolve().parents[2] / "deploy" / "example-policy.toml").read_text()

# Line 14 names a segment that does not exist (rule "bogus" spans lines 12-16).
POLICY_BAD = """\
[segments]
clients = { tags = ["client"] }
web = { tags = ["web"] }
db = { tags = ["db"] }

[[rules]]
name = "clients-to-web"
from = ["clients"]
to = ["web"]
ports = ["tcp/80", "icmp"]

[[rules]]
name = "bogus"
from = ["no-such-segment"]
to = ["db"]
ports = ["tcp/5432"]
"""

POLICY_V2 = POLICY_V1.replace(
    '[[tests]]\nfrom = "tag:client"\nto = "tag:db"\nport = "tcp/5432"\nexpect = "deny"\n',
    '[[rules]]\nname = "clients-to-db"\nfrom = ["clients"]\nto = ["db"]\nports = ["tcp/5432"]\n\n'
    '[[tests]]\nfrom = "tag:client"\nto = "tag:db"\nport = "tcp/5432"\nexpect = "allow"\n',
)
assert POLICY_V2 != POLICY_V1


class Results:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, name: str, ok: bool, reason: str = "") -> bool:
        if ok:
            self.passed += 1
            print(f"PASS {name}", flush=True)
        else:
            self.failed += 1
            print(f"FAIL {name}: {reason or 'check returned false'}", flush=True)
        return ok

    def run(self, name: str, fn, reason: str = "") -> bool:
        """fn() -> bool or (bool, reason); an exception is a failure with its message."""
        try:
            v = fn()
        except LabError as e:
            return self.check(name, False, str(e))
        if isinstance(v, tuple):
            return self.check(name, bool(v[0]), v[1] if not v[0] else "")
        return self.check(name, bool(v), reason)


def total_drops(status: dict) -> int:
    return sum(int(v) for v in (status.get("drops") or {}).values() if isinstance(v, int))


def peer(status: dict, name: str) -> dict | None:
    for p in status.get("peers") or []:
        if p.get("name") == name:
            return p
    return None


def scenario(lab: Lab, r: Results) -> None:
    t = time.monotonic()

    def step(msg: str) -> None:
        print(f"# [{time.monotonic() - t:5.1f}s] {msg}", flush=True)

    step("starting server")
    lab.start_server()
    tags = {"n1": "client", "n2": "web", "n3": "db"}
    for n, tag in tags.items():
        # n3 runs without TUN offloads: both kinds of device, and traffic between them.
        lab.start_node(n, lab.create_token([tag]), ["--no-tun-offload"] if n == "n3" else [])
    step("waiting for the nodes to connect")
    lab.wait_connected(list(tags), timeout=60)
    ip = {n: lab.overlay_ip(n) for n in tags}
    step(f"overlay addresses: {ip}")

    def enrolled():
        devs = {d.get("name"): d for d in lab.devices()}
        bad = [n for n, tag in tags.items()
               if n not in devs or devs[n].get("status") != "active"
               or tag not in (devs[n].get("tags") or [])]
        return (not bad, f"devices missing/wrong: {bad}; list: {list(devs.values())}")
    r.run("enrolled: devices list shows n1, n2, n3 active with their tags", enrolled)

    # --- default deny ------------------------------------------------------------
    r.run("default deny: n1 cannot ping n2 before any policy",
          lambda: not lab.ping("n1", ip["n2"]), "got an ICMP reply")

    # --- policy v1 ---------------------------------------------------------------
    step("setting policy v1")
    p = lab.set_policy(POLICY_V1, check=False)
    r.check("policy v1 accepted", p.returncode == 0, f"exit {p.returncode}: {p.stderr.strip()}")

    r.run("n1 pings n2 (clients->web icmp)",
          lambda: wait_for(lambda: lab.ping("n1", ip["n2"]), 20), "no ICMP reply within 20s")
    r.run("n1 tcp/80 to n2 passes",
          lambda: wait_for(lambda: lab.tcp_check("n1", "n2", ip["n2"], 80), 10),
          "no echo within 10s")
    # --- bulk data through the offloads ---------------------------------------------
    def offloads(want: dict[str, str]):
        logs = {n: (lab.tmp / f"{n}.log").read_text(errors="replace") for n in want}
        bad = [n for n, text in logs.items() if f"tcp_offload={want[n]}" not in text]
        return (not bad, f"no `tcp_offload=...` as expected ({want}) in the logs of {bad}")
    r.run("n1 and n2 run with TUN offloads (TSO/GRO), n3 without (--no-tun-offload)",
          lambda: offloads({"n1": "true", "n2": "true", "n3": "false"}))
    r.run("bulk: 16 MiB each way over n1 -> n2 tcp/80 arrive intact (super-packets split and coalesced)",
          lambda: tcp_bulk(lab, "n1", "n2", ip["n2"], 80, 16 << 20))
    r.run("after the bulk transfer, n1 tcp/22 to n2 is still dropped",
          lambda: not lab.tcp_check("n1", "n2", ip["n2"], 22), "connection succeeded")
    r.run("n2 tcp/5432 to n3 passes (web->db)",
          lambda: wait_for(lambda: lab.tcp_check("n2", "n3", ip["n3"], 5432), 15),
          "no echo within 15s")
    r.run("bulk: 8 MiB each way over n2 -> n3 tcp/5432, offloading node to plain node, intact",
          lambda: tcp_bulk(lab, "n2", "n3", ip["n3"], 5432, 8 << 20))
    r.run("n1 tcp/5432 to n3 is dropped (no clients->db rule)",
          lambda: not lab.tcp_check("n1", "n3", ip["n3"], 5432), "connection succeeded")
    r.run("stateful: n2 cannot open tcp/80 to n1 (only replies pass)",
          lambda: not lab.tcp_check("n2", "n1", ip["n1"], 80), "connection succeeded")

    # --- counters at the receiver ---------------------------------------------------
    before = total_drops(lab.status("n2"))
    denied = lab.tcp_check("n1", "n2", ip["n2"], 22)
    r.check("n1 tcp/22 to n2 is dropped (port not in rule)", not denied, "connection succeeded")

    def drops_rose():
        st = lab.status("n2")
        after = total_drops(st)
        return (after > before and after > 0,
                f"n2 drops did not rise ({before} -> {after}): {st.get('drops')}")
    r.run("status n2: drop counter rose after the denied attempt",
          lambda: wait_for(lambda: drops_rose()[0], 5) or drops_rose())

    def handshake():
        st = lab.status("n2")
        p1 = peer(st, "n1")
        return (p1 is not None and p1.get("last_handshake_secs") is not None,
                f"n2 peers: {st.get('peers')}")
    r.run("status n2: peer n1 listed with a handshake", handshake)

    def public_endpoint():
        pe = lab.status("n2").get("public_endpoint") or ""
        return (pe.startswith("10.88.") and pe.endswith(":51820"),
                f"n2 public_endpoint is {pe!r}")
    r.run("status n2: public endpoint learned over STUN from the WireGuard socket",
          lambda: wait_for(lambda: public_endpoint()[0], 10) or public_endpoint())

    # --- what-if, flow records, metrics --------------------------------------------
    c = lab.admin("policy", "check", "--from", "n1", "--to", "n2", "--port", "tcp/22", check=False)
    r.check("policy check n1 -> n2 tcp/22 answers DENY (default deny)",
            c.returncode == 0 and c.stdout.startswith("DENY: denied: no rule matched"),
            f"exit {c.returncode}: {(c.stdout + c.stderr).strip()[:300]!r}")
    c = lab.admin("policy", "check", "--from", "n1", "--to", "n2", "--port", "tcp/80", check=False)
    r.check("policy check n1 -> n2 tcp/80 names the allowing rule",
            c.returncode == 0 and "allowed by rule `clients-to-web`" in c.stdout,
            f"exit {c.returncode}: {(c.stdout + c.stderr).strip()[:300]!r}")

    def denied_flow_recorded():
        f = lab.admin("flows", "--device", "n2", "--denied", "--output", "json", check=False)
        if f.returncode != 0:
            return (False, f"exit {f.returncode}: {f.stderr.strip()[:300]}")
        flows = json.loads(f.stdout or "[]")
        hit = [x for x in flows if x.get("dst_port") == 22 and x.get("src") == ip["n1"]]
        return (bool(hit) and all(x.get("verdict") == "no_rule" for x in hit),
                f"no no_rule record for {ip['n1']} -> tcp/22 in {flows[:5]}")
    r.run("flows --device n2 --denied lists the dropped tcp/22 attempt",
          lambda: wait_for(lambda: denied_flow_recorded()[0], 10) or denied_flow_recorded())

    def metrics(ns: str, port: int) -> str:
        code = ("import urllib.request,sys;"
                f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{port}/metrics', timeout=5).read().decode())")
        m = lab.exec_in(ns, [sys.executable, "-c", code], timeout=15)
        return m.stdout if m.returncode == 0 else f"exit {m.returncode}: {m.stderr[-300:]}"
    srv = metrics(lab.ns_of("server"), 9464)
    r.check("server metrics: 3 connected devices, policy version 1",
            "ztmesh_server_connected_devices 3" in srv and "ztmesh_server_policy_version 1" in srv,
            srv[:400])
    node = metrics(lab.ns_of("n2"), 9465)
    r.check("n2 daemon metrics count the no_rule drops",
            re.search(r'ztmesh_daemon_packets_total\{direction="inbound",verdict="dropped",reason="no_rule"\} [1-9]', node)
            is not None, node[:400])

    stun_code = (
        "import os,socket,struct,sys\n"
        "tid=os.urandom(12)\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(3)\n"
        f"s.sendto(struct.pack('!HHI',1,0,0x2112A442)+tid,('{SERVER_IP}',3478))\n"
        "d,_=s.recvfrom(1500)\n"
        "assert d[8:20]==tid and d[0:2]==bytes([1,1])\n"
        "i=20\n"
        "while i+4<=len(d):\n"
        "  t,l=struct.unpack('!HH',d[i:i+4]);v=d[i+4:i+4+l]\n"
        "  if t==0x20:\n"
        "    p=struct.unpack('!H',v[2:4])[0]^0x2112\n"
        "    a=bytes(x^y for x,y in zip(v[4:8],struct.pack('!I',0x2112A442)))\n"
        "    print(socket.inet_ntoa(a),p,s.getsockname()[1]);sys.exit(0)\n"
        "  i+=4+((l+3)//4)*4\n"
        "sys.exit(1)\n")
    st = lab.exec_in(lab.ns_of("n1"), [sys.executable, "-c", stun_code], timeout=15)
    words = st.stdout.split()
    r.check("the server answers STUN with n1's address and port as it sees them",
            st.returncode == 0 and len(words) == 3 and words[1] == words[2]
            and words[0].startswith("10.88."),
            f"exit {st.returncode}: {(st.stdout + st.stderr).strip()[-300:]!r}")

    # --- rejected policy ------------------------------------------------------------
    step("submitting a policy with an undefined segment")
    bad = lab.policy_file(POLICY_BAD, "bad")
    v = lab.admin("policy", "validate", str(bad), check=False)
    r.check("policy validate rejects an undefined segment", v.returncode != 0,
            f"exit 0; stdout: {v.stdout.strip()[:300]}")
    s = lab.admin("policy", "set", str(bad), check=False)
    msg = (s.stderr + s.stdout).strip()
    print(f"# rejected policy message: {msg[:300]}")
    r.check("policy set refuses it (non-zero exit)", s.returncode != 0, "exit 0")
    r.check("the error names the line", re.search(r"line\s*:?\s*1[2-6]\b", msg, re.I) is not None
            or re.search(r":1[2-6]:\d+", msg) is not None,
            f"no 'line 14' (or :14:col) in: {msg[:300]!r}")
    g = lab.admin("policy", "get", check=False)
    r.check("policy get still returns the old policy",
            g.returncode == 0 and "clients-to-web" in g.stdout and "bogus" not in g.stdout,
            f"exit {g.returncode}: {g.stdout[:300]!r}")
    r.run("old policy still works: n1 tcp/80 to n2 passes",
          lambda: wait_for(lambda: lab.tcp_check("n1", "n2", ip["n2"], 80), 6),
          "no echo within 6s")

    # --- live policy change ----------------------------------------------------------
    step("setting policy v2 (adds clients->db tcp/5432)")
    p = lab.set_policy(POLICY_V2, check=False)
    r.check("policy v2 accepted", p.returncode == 0, f"exit {p.returncode}: {p.stderr.strip()}")
    t0 = time.monotonic()
    ok = wait_for(lambda: lab.tcp_check("n1", "n3", ip["n3"], 5432), 15)
    r.check("policy change without restart: n1 tcp/5432 to n3 passes",
            bool(ok), "still dropped after 15s")
    if ok:
        print(f"# took effect in {time.monotonic() - t0:.1f}s")

    h = lab.admin("policy", "history", "--output", "json", check=False)
    versions = json.loads(h.stdout or "[]") if h.returncode == 0 else []
    r.check("policy history lists versions 2 (current) and 1",
            [(v.get("version"), v.get("current")) for v in versions] == [(2, True), (1, False)],
            f"exit {h.returncode}: {h.stdout[:300]!r} {h.stderr[:200]!r}")

    # --- revocation ---------------------------------------------------------------------
    step("revoking n1")
    rv = lab.admin("devices", "revoke", "n1", check=False)
    r.check("devices revoke n1 succeeds", rv.returncode == 0,
            f"exit {rv.returncode}: {rv.stderr.strip()}")
    t0 = time.monotonic()
    cut = wait_for(lambda: not lab.ping("n1", ip["n2"], count=1, timeout=1.0)
                   and not lab.tcp_check("n1", "n2", ip["n2"], 80, timeout=1.5), 15)
    r.check("revoked n1 can no longer reach n2 (ping and tcp/80)", bool(cut),
            "n1 still reaches n2 after 15s")
    if cut:
        print(f"# cut off within {time.monotonic() - t0:.1f}s")

    def revoked_listed():
        devs = {d.get("name"): d for d in lab.devices()}
        st = (devs.get("n1") or {}).get("status")
        return (st == "revoked", f"n1 status is {st!r}")
    r.run("devices list shows n1 revoked", revoked_listed)

    # --- server down -------------------------------------------------------------------
    step("killing the server")
    lab.kill_server()
    r.run("server down: n2 tcp/5432 to n3 still passes",
          lambda: wait_for(lambda: lab.tcp_check("n2", "n3", ip["n3"], 5432), 8),
          "no echo within 8s")
    r.run("server down: n1 tcp/80 to n2 still dropped",
          lambda: not lab.tcp_check("n1", "n2", ip["n2"], 80), "connection succeeded")
    step("done")


def main() -> int:
    require = os.environ.get("ZTMESH_REQUIRE_NETNS") == "1"
    r = Results()

    def on_alarm(signum, frame):
        raise TimeoutError(f"test exceeded its {TOTAL_BUDGET}s budget")
    signal.signal(signal.SIGALRM, on_alarm)

    started = time.monotonic()
    try:
        with Lab(nodes=["n1", "n2", "n3"], keep_tmp=os.environ.get("ZTMESH_LAB_KEEP") == "1") as lab:
            b = binary_path()
            if not b.is_file():
                print(f"ERROR: ztmesh binary not found at {b}: run `cargo build` first "
                      "(or set ZTMESH_BIN)", flush=True)
                r.check("binary present", False, f"{b} missing")
            else:
                signal.alarm(TOTAL_BUDGET)
                try:
                    scenario(lab, r)
                except Exception as e:  # noqa: BLE001 - any error is a failed scenario
                    r.check("scenario", False, f"aborted: {e}")
                    traceback.print_exc()
                finally:
                    signal.alarm(0)
                if r.failed:
                    lab.dump_logs(40)
    except Skip as e:
        print(f"SKIPPED: network-namespace tests: {e}", flush=True)
        if require:
            print("ZTMESH_REQUIRE_NETNS=1: a skip counts as a failure", flush=True)
            return 1
        return 0
    except KeyboardInterrupt:
        print("interrupted; lab cleaned up", flush=True)
        print(f"{r.passed} passed, {r.failed + 1} failed")
        return 130
    print(f"# took {time.monotonic() - started:.1f}s", flush=True)
    print(f"{r.passed} passed, {r.failed} failed", flush=True)
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
