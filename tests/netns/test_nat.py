#!/usr/bin/env python3
"""NAT traversal, relays and roaming in network namespaces (root, real TUN).

n1 (tag client) behind home router r1 and n2 (tag web) behind home router
r2, both routers masquerading with nftables and dropping what comes in
unasked (see natlab.py). The server, with its STUN responder and its relay,
is on the "internet" between them. Three labs, one after another:

1. Endpoint-independent NATs (home routers):
   - each daemon learns its public endpoint (the router's address) over STUN;
   - the two talk directly through both NATs, each sending to the other
     router's public address, and the relay carries none of their data;
   - the policy still applies across the NATs (a denied flow stays denied);
   - n1 moves to another network (new address, new NAT) while pinging n2:
     the tunnel follows within 5 seconds, without re-enrollment.
2. Symmetric NATs on both sides: no direct path; traffic goes through the
   relay, and the policy applies there too. Full-size packets go through
   it without one IP fragment: those that must not be fragmented get
   "fragmentation needed" from the daemon (TCP then sends smaller
   segments), the others go over the relay's TLS.
   n1 then joins n2's network: the direct path found there takes over.
3. n1's network drops all outbound UDP: traffic goes through the relay's
   TLS stream (TCP), and the policy applies there too. This relay is a
   standalone `ztmesh relay` over the server's data directory.

Same output and skip rules as test_overlay.py.

    sudo python3 tests/netns/test_nat.py        # after `cargo build`
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lab import (ICMP_PRELUDE, SERVER_IP, LabError, Skip, _readline, binary_path,  # noqa: E402
                 wait_for)
from bulk import tcp_bulk  # noqa: E402
from natlab import HOME, ROAM_TO, NatLab  # noqa: E402
from test_overlay import POLICY_V1, Results, peer  # noqa: E402

TOTAL_BUDGET = 110  # per lab
ROAM_BUDGET = 5.0  # seconds of replies a roam may cost at most
WG_PORT = 51820

# Pings every 0.1 s for `seconds`; prints the reply times (monotonic) as
# JSON at the end.
_PINGER_SRC = ICMP_PRELUDE + r"""
import json
dst, seconds = sys.argv[1], float(sys.argv[2])
start = time.monotonic()
print(json.dumps({"start": start}), flush=True)
end = start + seconds
next_send, seq, replies = 0.0, 0, []
while time.monotonic() < end:
    now = time.monotonic()
    if now >= next_send:
        seq += 1
        try:
            s.sendto(echo(seq, b"ztmesh-roam"), (dst, 0))
        except OSError:
            pass
        next_send = now + 0.1
    r, _, _ = select.select([s], [], [], 0.02)
    if not r:
        continue
    data, addr = s.recvfrom(65535)
    if reply_seq(data, addr, dst) is not None:
        replies.append(time.monotonic())
print(json.dumps({"sent": seq, "replies": replies}), flush=True)
"""


# One echo request of `size` bytes (IP header included), with "don't
# fragment" or without; prints what came back first: "reply", or
# "too-big mtu=N" (ICMP fragmentation needed quoting our request).
_BIG_ECHO_SRC = ICMP_PRELUDE + r"""
dst, size, df, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "df", float(sys.argv[4])
IP_MTU_DISCOVER, IP_PMTUDISC_DONT, IP_PMTUDISC_DO = 10, 0, 2
s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO if df else IP_PMTUDISC_DONT)
deadline = time.monotonic() + timeout
next_send, seq = 0.0, 0
while time.monotonic() < deadline:
    now = time.monotonic()
    if now >= next_send:
        seq += 1
        try:
            s.sendto(echo(seq, b"z" * (size - 28)), (dst, 0))
        except OSError as e:
            print("send: %s" % e)
            sys.exit(1)
        next_send = now + 0.5
    r, _, _ = select.select([s], [], [], 0.05)
    if not r:
        continue
    data, addr = s.recvfrom(65535)
    if reply_seq(data, addr, dst) is not None:
        print("reply")
        sys.exit(0)
    ihl = (data[0] & 0x0f) * 4
    icmp = data[ihl:]
    if len(icmp) >= 36 and icmp[0] == 3 and icmp[1] == 4 and addr[0] == dst:
        inner = icmp[8:]
        inner_ihl = (inner[0] & 0x0f) * 4
        quoted = inner[inner_ihl:inner_ihl + 8]
        if len(quoted) == 8 and struct.unpack("!H", quoted[4:6])[0] == ident:
            print("too-big mtu=%d" % struct.unpack("!H", icmp[6:8])[0])
            sys.exit(0)
print("nothing")
sys.exit(1)
"""

# The relay's datagrams over IPv4 hold WireGuard messages of up to 1,404
# bytes (a 1,500-byte link less IP, UDP and the relay's header): overlay
# packets of up to 1,372 bytes.
RELAY_MTU = 1372


def big_echo(lab: NatLab, src: str, dst_ip: str, size: int, df: bool,
             want: str) -> tuple[bool, str]:
    """One echo request of `size` bytes; whether what came back is `want`
    (and what it was)."""
    r = lab.exec_in(lab.ns_of(src), [sys.executable, "-c", _BIG_ECHO_SRC, dst_ip, str(size),
                                     "df" if df else "may-fragment", "3"], timeout=15)
    got = (r.stdout or r.stderr or "").strip()
    return got == want, f"got {got!r}"


def fragments(lab: NatLab) -> dict[str, int]:
    """IP fragments made or reassembled so far, by namespace (the nodes,
    their routers, the server with its relay)."""
    out = {}
    for ns in (lab.ns_of("n1"), lab.ns_of("n2"), lab.server_ns,
               lab.router_ns["r1"], lab.router_ns["r2"]):
        r = lab.exec_in(ns, ["cat", "/proc/net/snmp"])
        rows = [line.split() for line in (r.stdout or "").splitlines() if line.startswith("Ip:")]
        counters = dict(zip(rows[0][1:], map(int, rows[1][1:]))) if len(rows) == 2 else {}
        out[ns] = counters.get("FragCreates", -1) + counters.get("ReasmReqds", -1)
    return out


def scenario_relay_mtu(lab: NatLab, r: Results, ip: dict[str, str], what: str) -> None:
    """Full-size packets through the relay's UDP: no IP fragment anywhere.
    One that may be fragmented goes over the relay's TLS instead; one that
    must not gets "fragmentation needed" from the daemon, and the kernel
    keeps the smaller MTU for the peer, so TCP sends segments that fit."""
    before = fragments(lab)
    r.run(f"{what}: a 1,420-byte echo without DF through the relay gets its reply",
          lambda: big_echo(lab, "n1", ip["n2"], 1420, df=False, want="reply"))
    r.run(f"{what}: a 1,420-byte echo with DF gets fragmentation needed, mtu {RELAY_MTU}",
          lambda: big_echo(lab, "n1", ip["n2"], 1420, df=True, want=f"too-big mtu={RELAY_MTU}"))
    route = lab.exec_in(lab.ns_of("n1"), ["ip", "route", "get", ip["n2"]]).stdout or ""
    r.check(f"{what}: n1's kernel keeps mtu {RELAY_MTU} for n2",
            f"mtu {RELAY_MTU}" in route, route.strip())
    status = lab.status("n1")
    r.check(f"{what}: n1's status shows relay mtu {RELAY_MTU} and the packet dropped as too_big",
            status.get("relay_mtu") == RELAY_MTU and (status.get("drops") or {}).get("too_big", 0) >= 1,
            json.dumps({k: status.get(k) for k in ("relay_transport", "relay_mtu", "drops")}))
    text = lab.exec_in(lab.ns_of("n1"), [lab.binary(), "status", "--state-dir",
                                         str(lab.state_dir("n1"))]).stdout or ""
    line = f"relay: udp (packets up to {RELAY_MTU} bytes in one datagram)"
    r.check(f"{what}: `ztmesh status` says so: {line!r}", line in text.splitlines(), text)
    r.run(f"{what}: a {RELAY_MTU}-byte echo with DF gets its reply",
          lambda: big_echo(lab, "n1", ip["n2"], RELAY_MTU, df=True, want="reply"))
    r.run(f"{what}: bulk: 4 MiB each way over n1 -> n2 tcp/80 through the relay arrive intact",
          lambda: tcp_bulk(lab, "n1", "n2", ip["n2"], 80, 4 << 20))
    after = fragments(lab)
    made = {ns: after[ns] - before[ns] for ns in after}
    r.check(f"{what}: no IP fragment made or reassembled anywhere on the way",
            all(n == 0 for n in made.values()) and all(n >= 0 for n in before.values()),
            json.dumps(made))


def endpoint_ip(p: dict | None) -> str:
    return ((p or {}).get("endpoint") or "").rsplit(":", 1)[0]


STANDALONE_RELAY_PORT = 8443


def bring_up(lab: NatLab, standalone_relay: bool = False) -> dict[str, str]:
    """Server (with STUN and the relay, built in or `ztmesh relay` beside
    it) and policy, n1 (client) and n2 (web) enrolled and connected; their
    overlay addresses."""
    if standalone_relay:
        lab.start_server(extra=["--relay-listen", "off", "--relay-advertise",
                                f"{SERVER_IP}:{STANDALONE_RELAY_PORT}"])
        lab.start_relay(STANDALONE_RELAY_PORT)
    else:
        lab.start_server()
    lab.set_policy(POLICY_V1)
    for n, tag in (("n1", "client"), ("n2", "web")):
        lab.start_node(n, lab.create_token([tag]))
    lab.wait_connected(["n1", "n2"])
    return {n: lab.overlay_ip(n) for n in ("n1", "n2")}


def scenario(lab: NatLab, r: Results) -> None:
    t = time.monotonic()

    def step(msg: str) -> None:
        print(f"# [{time.monotonic() - t:5.1f}s] {msg}", flush=True)

    step("starting server (with STUN) on the internet")
    ip = bring_up(lab)
    public = {"n1": lab.public_ip("r1"), "n2": lab.public_ip("r2")}

    r.run("both daemons hold a relay connection (the server's built-in relay)",
          lambda: wait_for(lambda: all(lab.status(n).get("relay_connected")
                                       for n in ("n1", "n2")), 10),
          "relay_connected is not true on both")

    step("STUN: each daemon learns its router's address")
    for n in ("n1", "n2"):
        r.run(f"{n} learns its public endpoint {public[n]}:{WG_PORT} over STUN",
              lambda n=n: wait_for(lambda: lab.status(n).get("public_endpoint")
                                   == f"{public[n]}:{WG_PORT}", 10),
              f"status says {lab.status(n).get('public_endpoint')!r}")

    step("direct path through both NATs")
    r.run("n1 pings n2 through both NATs",
          lambda: wait_for(lambda: lab.ping("n1", ip["n2"]), 20), "no reply within 20s")
    s1 = lab.status("n1")
    p12 = peer(s1, "n2")
    r.check("n1 sends to n2 at r2's public address (direct)",
            endpoint_ip(p12) == public["n2"] and (p12 or {}).get("path") == "direct",
            f"peer n2 in n1's status: {json.dumps(p12)}")
    r.check("n1's status shows the handshake round trip to n2",
            isinstance((p12 or {}).get("rtt_ms"), (int, float)), json.dumps(p12))
    p21 = peer(lab.status("n2"), "n1")
    r.check("n2 sends to n1 at r1's public address (direct)",
            endpoint_ip(p21) == public["n1"], f"peer n1 in n2's status: {json.dumps(p21)}")
    # Whichever side started the handshake in force, each times it: the
    # initiator up to the response, the responder up to the first packet.
    r.check("n2's status shows the handshake round trip to n1",
            isinstance((p21 or {}).get("rtt_ms"), (int, float)), json.dumps(p21))

    step("policy across the NATs")
    r.run("n1 tcp/80 to n2 passes", lambda: lab.tcp_check("n1", "n2", ip["n2"], 80),
          "no echo")
    r.run("n1 tcp/22 to n2 is dropped",
          lambda: not lab.tcp_check("n1", "n2", ip["n2"], 22), "connection succeeded")
    r.run("n2 ping to n1 is dropped (web may not reach clients)",
          lambda: not lab.ping("n2", ip["n1"]), "reply received")

    step("n1 roams to another network while pinging n2")
    seconds = 14.0
    pinger = lab._spawn("pinger", lab.node_ns["n1"],
                        [sys.executable, "-u", "-c", _PINGER_SRC, ip["n2"], str(seconds)],
                        log=False, stdout_pipe=True)
    start = json.loads(_readline(pinger.popen, 10.0) or "{}").get("start")
    time.sleep(4.0)
    roamed_at = time.monotonic()
    lab.roam("n1")
    pinger.popen.wait(timeout=seconds + 10)
    out = pinger.popen.stdout.read().decode() if pinger.popen.stdout else ""
    result = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    replies = result.get("replies") or []
    if start is None or not replies:
        r.check("ping from n1 to n2 ran", False, f"pinger output: {out[-500:]!r}")
        return
    times = [start] + replies + [start + seconds]
    gaps = [b - a for a, b in zip(times, times[1:])]
    worst = max(gaps)
    after = [x for x in replies if x > roamed_at]
    step(f"pinger: {len(replies)}/{result.get('sent')} replies, longest gap {worst:.2f}s, "
         f"first reply after the roam {((after[0] - roamed_at) if after else float('nan')):.2f}s")
    r.check(f"n1 roams: replies resume, the longest gap is at most {ROAM_BUDGET:.0f}s",
            bool(after) and worst <= ROAM_BUDGET,
            f"longest gap {worst:.2f}s; {len(after)} replies after the roam")
    r.run("after the roam, n2 sends to n1 at r3's public address",
          lambda: wait_for(lambda: endpoint_ip(peer(lab.status("n2"), "n1"))
                           == lab.public_ip(ROAM_TO), 5),
          f"peer n1 in n2's status: {json.dumps(peer(lab.status('n2'), 'n1'))}")
    r.run("after the roam, n1's public endpoint is r3's",
          lambda: wait_for(lambda: (lab.status("n1").get("public_endpoint") or "")
                           .startswith(lab.public_ip(ROAM_TO) + ":"), 5),
          f"status says {lab.status('n1').get('public_endpoint')!r}")
    r.run("after the roam, n1 tcp/22 to n2 is still dropped",
          lambda: not lab.tcp_check("n1", "n2", ip["n2"], 22), "connection succeeded")
    for a, b in (("n1", "n2"), ("n2", "n1")):
        p = peer(lab.status(a), b)
        r.check(f"the relay carried none of {a}'s data with {b} (direct all along)",
                (p or {}).get("relay_data_packets") == 0 and (p or {}).get("path") == "direct",
                json.dumps(p))
    step("done")


def scenario_relayed(lab: NatLab, r: Results) -> None:
    """No direct path (symmetric NATs, or UDP blocked): the relay carries
    the traffic, and the policy still holds."""
    t = time.monotonic()
    what = {"symmetric": "symmetric NATs", "udp-blocked": "UDP blocked at n1"}[lab.shape]

    def step(msg: str) -> None:
        print(f"# [{time.monotonic() - t:5.1f}s] {what}: {msg}", flush=True)

    # UDP blocked: the relay runs on its own (`ztmesh relay`), beside a
    # server with its built-in relay off.
    standalone = lab.shape == "udp-blocked"
    step("starting server, " + ("a standalone relay" if standalone else "its relay")
         + " and nodes")
    ip = bring_up(lab, standalone_relay=standalone)
    transport = "udp" if lab.shape == "symmetric" else "tls"
    r.run(f"{what}: n1's relay link carries packets over {transport}",
          lambda: wait_for(lambda: lab.status("n1").get("relay_transport") == transport, 15),
          f"relay_transport is {lab.status('n1').get('relay_transport')!r}")
    r.run(f"{what}: n1 pings n2 through the relay",
          lambda: wait_for(lambda: lab.ping("n1", ip["n2"]), 25), "no reply within 25s")
    for a, b in (("n1", "n2"), ("n2", "n1")):
        r.run(f"{what}: {a} reaches {b} through the relay, and data went that way",
              lambda a=a, b=b: wait_for(
                  lambda: (peer(lab.status(a), b) or {}).get("path") == "relay"
                  and (peer(lab.status(a), b) or {}).get("relay_data_packets", 0) > 0, 5),
              json.dumps(peer(lab.status(a), b)))
    if lab.shape == "symmetric":
        pub = lab.status("n1").get("public_endpoint") or ""
        r.check(f"{what}: STUN sees n1 at a random port (not {WG_PORT})",
                pub.startswith(lab.public_ip("r1") + ":") and not pub.endswith(f":{WG_PORT}"),
                f"public endpoint {pub!r}")
    else:
        r.check(f"{what}: n1 learns no public endpoint (STUN is UDP)",
                not lab.status("n1").get("public_endpoint"),
                f"public endpoint {lab.status('n1').get('public_endpoint')!r}")
    r.run(f"{what}: n1 tcp/80 to n2 passes through the relay",
          lambda: lab.tcp_check("n1", "n2", ip["n2"], 80), "no echo")
    r.run(f"{what}: n1 tcp/22 to n2 is dropped through the relay",
          lambda: not lab.tcp_check("n1", "n2", ip["n2"], 22), "connection succeeded")
    r.run(f"{what}: n2 ping to n1 is dropped through the relay",
          lambda: not lab.ping("n2", ip["n1"]), "reply received")
    if lab.shape == "symmetric":
        scenario_relay_mtu(lab, r, ip, what)
    if lab.shape == "symmetric":
        step("n1 joins n2's network (a laptop brought into the office)")
        lab.roam("n1", to=HOME["n2"])

        def direct_again() -> bool:
            lab.ping("n1", ip["n2"], count=1, timeout=0.5)
            return all((peer(lab.status(a), b) or {}).get("path") == "direct"
                       for a, b in (("n1", "n2"), ("n2", "n1")))
        started = time.monotonic()
        r.run(f"{what}: once a direct path exists, traffic leaves the relay for it (within 20 s)",
              lambda: wait_for(direct_again, 20),
              f"n1's view of n2: {json.dumps(peer(lab.status('n1'), 'n2'))}")
        step(f"direct after {time.monotonic() - started:.1f}s")
        p12 = peer(lab.status("n1"), "n2") or {}
        r.check(f"{what}: the direct path is n2's LAN address",
                (p12.get("endpoint") or "").startswith(lab.lan_ip("n2") + ":"), json.dumps(p12))
        r.run(f"{what}: on the new direct path, n1 tcp/22 to n2 is still dropped",
              lambda: not lab.tcp_check("n1", "n2", ip["n2"], 22), "connection succeeded")
    step("done")


def main() -> int:
    require = os.environ.get("ZTMESH_REQUIRE_NETNS") == "1"
    r = Results()

    def on_alarm(signum, frame):
        raise TimeoutError(f"test exceeded its {TOTAL_BUDGET}s budget")
    signal.signal(signal.SIGALRM, on_alarm)

    started = time.monotonic()
    only = os.environ.get("ZTMESH_NAT_SHAPES", "eim,symmetric,udp-blocked").split(",")
    try:
        b = binary_path()
        if not b.is_file():
            print(f"ERROR: ztmesh binary not found at {b}: run `cargo build` first "
                  "(or set ZTMESH_BIN)", flush=True)
            r.check("binary present", False, f"{b} missing")
            only = []
        for shape in only:
            failed_before = r.failed
            with NatLab(shape=shape, keep_tmp=os.environ.get("ZTMESH_LAB_KEEP") == "1") as lab:
                signal.alarm(TOTAL_BUDGET)
                try:
                    (scenario if shape == "eim" else scenario_relayed)(lab, r)
                except (Exception, LabError) as e:  # noqa: BLE001 - any error fails the scenario
                    r.check(f"{shape} scenario", False, f"aborted: {e}")
                    traceback.print_exc()
                finally:
                    signal.alarm(0)
                if r.failed > failed_before:
                    lab.dump_logs(60)
    except Skip as e:
        print(f"SKIPPED: NAT network-namespace tests: {e}", flush=True)
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
