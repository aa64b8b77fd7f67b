#!/usr/bin/env python3
"""Side-by-side throughput benchmark: ztmesh against userspace WireGuard.

Run as root through run.sh. Two namespaces joined by a veth pair; each
tunnel in turn between them; iperf3 TCP (1 and 4 streams, both directions),
UDP goodput (both directions) and ping RTT, with the CPU seconds the tunnel
processes used, and what each tunnel costs while no traffic flows (CPU
and wake-ups: battery). Rounds interleave the implementations. Prints min/median/max
and ratio matrices, and writes the raw results as JSON. Stdlib only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pings  # noqa: E402
import report  # noqa: E402
import tools  # noqa: E402
import tunnels  # noqa: E402
from netlab import BenchError, Netlab, tail  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
IPERF_PORT = 5201
UDP_LEN = 1380  # fits the 1420 overlay MTU: 1380 + 8 (UDP) + 20 (IPv4) = 1408
# Through the relay's UDP the path MTU is 1372 (a relay datagram over IPv4
# on a 1500-byte link holds no more; see the README's "Packet size"); a
# longer datagram with DF gets "fragmentation needed", and iperf3 stops at
# the EMSGSIZE that follows. 1344 + 8 + 20 = 1372.
UDP_LEN_RELAYED = 1344
RELAYED = {"ztmesh-relay"}

IMPLS = ["veth", "ztmesh", "ztmesh-relay", "boringtun", "boringtun-t1", "gotatun",
         "wireguard-go"]
OPTIONAL_IMPLS = ["wg-kernel"]  # only with --only: the kernel module, as a second reference

# test name: extra iperf3 client arguments ("-rev": the server sends, -R)
TESTS = {
    "tcp1": [], "tcp1-rev": ["-R"], "tcp4": ["-P", "4"], "tcp4-rev": ["-P", "4", "-R"],
    "udp": ["-u", "-b", "0", "-l", str(UDP_LEN)],
    "udp-rev": ["-u", "-b", "0", "-l", str(UDP_LEN), "-R"],
}
EXTRA_TESTS = ["ping", "idle"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="rounds (default 3), interleaved")
    ap.add_argument("--seconds", type=int, default=10, help="seconds per iperf3 test (default 10)")
    ap.add_argument("--only", default="",
                    help=f"comma-separated subset of: {','.join(IMPLS + OPTIONAL_IMPLS)}")
    ap.add_argument("--tests", default="",
                    help=f"comma-separated subset of: {','.join(TESTS)},{','.join(EXTRA_TESTS)}")
    ap.add_argument("--json", default="", help="where to write raw results "
                    "(default deploy/bench/results/bench-TIMESTAMP.json)")
    ap.add_argument("--keep-logs", action="store_true", help="keep the temp dir with the logs")
    args = ap.parse_args()

    impls = [s.strip() for s in args.only.split(",") if s.strip()] or list(IMPLS)
    unknown = [i for i in impls if i not in IMPLS + OPTIONAL_IMPLS]
    if unknown:
        ap.error(f"unknown implementation(s) {unknown}; known: {IMPLS + OPTIONAL_IMPLS}")
    known = list(TESTS) + EXTRA_TESTS
    tests = [s.strip() for s in args.tests.split(",") if s.strip()] or known
    bad = [t for t in tests if t not in known]
    if bad:
        ap.error(f"unknown test(s) {bad}; known: {known}")
    if args.rounds < 1 or args.seconds < 1:
        ap.error("--rounds and --seconds must be at least 1")
    if os.geteuid() != 0:
        print("bench: must run as root (namespaces, TUN devices); try: sudo deploy/bench/run.sh",
              file=sys.stderr)
        return 1

    zt = Path(os.environ.get("ZTMESH_BIN") or REPO / "target" / "release" / "ztmesh")
    if any(i.startswith("ztmesh") for i in impls) and not (zt.is_file() and os.access(zt, os.X_OK)):
        print(f"bench: no ztmesh binary at {zt}.\n"
              f"  build it with:  (cd {REPO} && cargo build --release --locked -p ztmesh)\n"
              "  or point ZTMESH_BIN at one.", file=sys.stderr)
        return 2
    try:
        bins = tools.ensure(impls)
    except tools.ToolError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    bins["ztmesh"] = str(zt)

    out_path = Path(args.json) if args.json else (
        REPO / "deploy" / "bench" / "results"
        / f"bench-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json")
    meta = {"started": dt.datetime.now().isoformat(timespec="seconds"),
            "rounds": args.rounds, "seconds": args.seconds, "impls": impls, "tests": tests,
            "kernel": platform.release(), "cpus": os.cpu_count(), "cpu_model": _cpu_model(),
            "versions": tools.versions(impls, bins), "udp_len": UDP_LEN,
            "udp_len_relayed": UDP_LEN_RELAYED,
            "overlay_mtu": tunnels.OVERLAY_MTU, "loadavg_start": _loadavg(),
            "ping": {"batches": pings.BATCHES, "per_batch": pings.PER_BATCH, "interval_s": 0.1}}

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_term)

    t_start = time.monotonic()
    lab = Netlab()
    results: list[dict] = []
    up: dict[str, tunnels.Tunnel] = {}
    failed: dict[str, str] = {}
    rc = 0
    try:
        lab.build()
        for i, name in enumerate(impls):
            lab.say(f"bringing up {name}")
            try:
                t = _bring_up(lab, i, name, bins)
                _wait_reachable(lab, t)
                up[name] = t
                lab.say(f"{name} up: {lab.ns_a} -> {t.dst_ip} ({t.facts})")
            except BenchError as e:
                failed[name] = str(e)
                print(f"[bench] {name} FAILED to come up: {e}", file=sys.stderr)
        meta["tunnels"] = {n: {"dst_ip": t.dst_ip, **t.facts} for n, t in up.items()}
        meta["failed"] = failed
        iperf = lab.spawn("iperf3-server", lab.ns_b, ["iperf3", "-s", "-p", str(IPERF_PORT)])
        lab.wait(lambda: _listening(lab, IPERF_PORT) or iperf.dead_error(), 10,
                 "iperf3 server")
        _hold(lab, up)
        for rnd in range(1, args.rounds + 1):
            if "ping" in tests:
                live = [n for n in impls if n in up]
                lab.say(f"round {rnd}/{args.rounds}: ping, {pings.BATCHES} batches "
                        f"of {pings.PER_BATCH} taking turns: {', '.join(live)}")
                for name, r in _ping_round(lab, up, live).items():
                    if r.get("error"):
                        print(f"[bench] {name} ping: {r['error']}", file=sys.stderr)
                    results.append({**r, "round": rnd, "impl": name, "test": "ping"})
            for name in impls:
                if name not in up:
                    continue
                for test in (t for t in tests if t != "ping"):
                    lab.say(f"round {rnd}/{args.rounds}: {name} {test}")
                    r = _measure(lab, up[name], test, args.seconds)
                    r.update(round=rnd, impl=name, test=test)
                    if r.get("error"):
                        print(f"[bench] {name} {test}: {r['error']}", file=sys.stderr)
                        iperf = _restart_iperf(lab, iperf)  # a failed client can leave it stuck
                    results.append(r)
        zt_t = up.get("ztmesh")
        if zt_t is not None:
            st = zt_t.status()
            hits = st.get("rule_hits") or {}
            meta["ztmesh_status_b"] = {
                "policy_version": st.get("policy_version"), "drops": st.get("drops"),
                "accepted_inbound": st.get("accepted_inbound"),
                "rules_with_hit_counters": len(hits),
                "rule_hits_nonzero": {k: v for k, v in hits.items() if v}}
    except KeyboardInterrupt as e:
        print(f"\n[bench] interrupted ({e or 'Ctrl-C'}); cleaning up", file=sys.stderr)
        rc = 130
        meta["interrupted"] = str(e) or "Ctrl-C"
    except BenchError as e:
        print(f"[bench] error: {e}", file=sys.stderr)
        for p in lab.procs:
            print(f"----- {p.name} ({p.log}) -----\n{tail(p.log, 15)}", file=sys.stderr)
        rc = 1
    finally:
        lab.close(keep_tmp=args.keep_logs)
    meta["elapsed_seconds"] = round(time.monotonic() - t_start, 1)
    meta["loadavg_end"] = _loadavg()
    if results:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
        print(report.render(meta, results))
        print(f"\nraw results: {out_path}")
    if failed:
        print(f"did not come up: {', '.join(f'{k} ({v[:200]})' for k, v in failed.items())}")
        rc = rc or 1
    return rc


def _bring_up(lab: Netlab, index: int, name: str, bins: dict[str, str]) -> tunnels.Tunnel:
    if name == "veth":
        return tunnels.up_veth(lab, index)
    if name == "ztmesh":
        return tunnels.up_ztmesh(lab, index, bins["ztmesh"])
    if name == "ztmesh-relay":
        return tunnels.up_ztmesh(lab, index, bins["ztmesh"], relayed=True)
    impl = tools.WG_IMPLS[name]
    return tunnels.up_wireguard(lab, index, impl, bins.get(name))


def _wait_reachable(lab: Netlab, t: tunnels.Tunnel) -> None:
    def ok():
        for p in t.procs:
            p.raise_if_dead()
        return lab.run(["ip", "netns", "exec", lab.ns_a, "ping", "-c", "1", "-W", "1", t.dst_ip],
                       timeout=5, check=False).returncode == 0
    lab.wait(ok, 30, f"{t.name}: ping {t.dst_ip} from {lab.ns_a}")


def _listening(lab: Netlab, port: int) -> bool:
    out = lab.run(["ip", "netns", "exec", lab.ns_b, "ss", "-Hltn", f"sport = :{port}"],
                  check=False).stdout
    return bool(out.strip())


def _restart_iperf(lab: Netlab, old):
    lab.stop(old)
    p = lab.spawn("iperf3-server", lab.ns_b, ["iperf3", "-s", "-p", str(IPERF_PORT)])
    lab.wait(lambda: _listening(lab, IPERF_PORT) or p.dead_error(), 10, "iperf3 server")
    return p


def _hold(lab: Netlab, up: dict) -> None:
    """ZTMESH_BENCH_HOLD=FILE: with every tunnel up, wait (at most an hour)
    until FILE is removed, so the setup can be profiled by hand."""
    hold = os.environ.get("ZTMESH_BENCH_HOLD")
    if not hold:
        return
    Path(hold).write_text("".join(
        f"{n} {lab.ns_a} -> {lab.ns_b} {t.dst_ip} pids {[p.pid for p in t.procs]}\n"
        for n, t in up.items()))
    lab.say(f"holding: tunnels listed in {hold}; remove it to go on")
    deadline = time.monotonic() + 3600
    while Path(hold).exists() and time.monotonic() < deadline:
        time.sleep(0.5)


def _measure(lab: Netlab, t: tunnels.Tunnel, test: str, seconds: int) -> dict:
    """One measurement, with the tunnel's CPU seconds and the host's busy CPU seconds."""
    time.sleep(0.5)  # let the previous test's queues drain
    cpu0, host0, w0 = _cpu(t), _host_busy(), time.monotonic()
    if test == "idle":
        r = _idle(t)
    else:
        r = _iperf(lab, t.dst_ip, iperf_args(test, t.name), seconds)
    r["wall_s"] = round(time.monotonic() - w0, 3)
    r["tunnel_cpu_s"] = round(_cpu(t) - cpu0, 3) if t.procs else None
    r["host_cpu_s"] = round(_host_busy() - host0, 3)
    return r


def iperf_args(test: str, impl: str) -> list[str]:
    """The iperf3 client arguments of `test` through `impl`: UDP
    datagrams as large as the tunnel's path MTU allows."""
    args = TESTS[test]
    if "-u" in args and impl in RELAYED:
        return [str(UDP_LEN_RELAYED) if a == str(UDP_LEN) else a for a in args]
    return args


def _iperf(lab: Netlab, dst: str, extra: list[str], seconds: int) -> dict:
    args = ["ip", "netns", "exec", lab.ns_a, "iperf3", "-c", dst, "-p", str(IPERF_PORT),
            "-t", str(seconds), "-J", "--connect-timeout", "5000", *extra]
    try:
        p = lab.run(args, timeout=seconds + 30, check=False)
    except BenchError as e:
        return {"error": str(e)}
    try:
        j = json.loads(p.stdout)
    except json.JSONDecodeError:
        return {"error": f"iperf3 exited {p.returncode}, no JSON: {(p.stderr or p.stdout)[-300:]}"}
    if j.get("error"):
        return {"error": f"iperf3: {j['error']}"}
    end = j.get("end", {})
    recv = end.get("sum_received") or end.get("sum") or {}
    r = {"mbps": round(recv.get("bits_per_second", 0) / 1e6, 2)}
    if "-u" in extra:
        r["loss_pct"] = round(recv.get("lost_percent", 0.0), 3)
        r["sent_mbps"] = round((end.get("sum_sent") or {}).get("bits_per_second", 0) / 1e6, 2)
    else:
        r["retransmits"] = (end.get("sum_sent") or {}).get("retransmits")
    return r


def _ping_round(lab: Netlab, up: dict[str, tunnels.Tunnel], names: list[str]) -> dict:
    """Every tunnel's pings for one round, in batches that take turns (see
    pings.py); the tunnel's CPU, host CPU and wall time summed over its batches."""
    batches: dict[str, list[dict]] = {n: [] for n in names}
    spent = {n: {"wall_s": 0.0, "tunnel_cpu_s": 0.0, "host_cpu_s": 0.0} for n in names}
    errors: dict[str, str] = {}
    time.sleep(0.5)  # let the previous test's queues drain
    for b in range(pings.BATCHES):
        for name in pings.turns(names, b):
            t = up[name]
            cpu0, host0, w0 = _cpu(t), _host_busy(), time.monotonic()
            try:
                batches[name].append(_ping(lab, t.dst_ip, pings.PER_BATCH))
            except (BenchError, ValueError) as e:
                errors.setdefault(name, str(e))
            spent[name]["wall_s"] += time.monotonic() - w0
            spent[name]["tunnel_cpu_s"] += _cpu(t) - cpu0
            spent[name]["host_cpu_s"] += _host_busy() - host0
    out = {}
    for name in names:
        r = {"error": errors[name]} if name in errors else pings.pool(batches[name])
        r.update({k: round(v, 3) for k, v in spent[name].items()})
        if not up[name].procs:
            r["tunnel_cpu_s"] = None
        out[name] = r
    return out


def _ping(lab: Netlab, dst: str, count: int) -> dict:
    p = lab.run(["ip", "netns", "exec", lab.ns_a, "ping", "-c", str(count), "-i", "0.1",
                 "-W", "2", dst], timeout=count * 0.1 + 20, check=False)
    return pings.parse(p.stdout)


# Seconds of no traffic per idle measurement.
IDLE_SECONDS = 10


def _idle(t: tunnels.Tunnel) -> dict:
    """What the tunnel costs with nothing to carry: on-CPU time and wake-ups
    (context switches of every thread). The CPU comes from a cgroup the
    processes are moved into for the window (every thread and every tool
    they run, to the microsecond); without one, from each thread's
    schedstat, which misses tools they ran and threads that ended."""
    if not t.procs:
        return {}
    with _Accounting(t) as acct:
        threads0, w0 = _threads(t), time.monotonic()
        time.sleep(IDLE_SECONDS)
        threads1, wall = _threads(t), time.monotonic() - w0
    cpu_ns = acct.ns if acct.ns is not None else sum(
        ns - threads0.get(tid, (0, 0))[0] for tid, (ns, _) in threads1.items())
    switches = sum(n - threads0.get(tid, (0, 0))[1] for tid, (_, n) in threads1.items())
    return {"idle_cpu_ms_per_min": round(cpu_ns / 1e6 * 60 / wall, 2),
            "idle_wakeups_per_s": round(switches / wall, 1), "idle_cpu_from": acct.source}


class _Accounting:
    """A CPU-accounting cgroup holding the tunnel's processes while in use
    (cgroup v2 `cpu.stat`, else v1 `cpuacct.usage`); `ns` is what they used
    inside, `None` where neither can be made. The processes go back to the
    root group afterwards and the group is removed."""

    KINDS = [(Path("/sys/fs/cgroup/unified"), "cpu.stat"), (Path("/sys/fs/cgroup"), "cpu.stat"),
             (Path("/sys/fs/cgroup/cpuacct"), "cpuacct.usage")]

    def __init__(self, t: tunnels.Tunnel):
        self.pids = [p.pid for p in t.procs]
        self.group: Path | None = None
        self.root: Path | None = None
        self.file = ""
        self.ns: int | None = None
        self.source = "schedstat"

    def __enter__(self):
        for root, file in self.KINDS:
            if not (root / "cgroup.procs").is_file() or not (root / file).is_file():
                continue
            group = root / f"ztmesh-bench-{os.getpid()}"
            try:
                group.mkdir(exist_ok=True)
                for pid in self.pids:
                    (group / "cgroup.procs").write_text(f"{pid}\n")
            except OSError:
                self._leave(root, group)
                continue
            self.root, self.group, self.file = root, group, file
            self.start = self._read()
            self.source = f"cgroup {group / file}"
            break
        return self

    def __exit__(self, *exc):
        if self.group is not None and self.root is not None:
            self.ns = self._read() - self.start
            self._leave(self.root, self.group)
        return False

    def _read(self) -> int:
        assert self.group is not None
        text = (self.group / self.file).read_text()
        if self.file == "cpu.stat":
            usec = next(int(line.split()[1]) for line in text.splitlines()
                        if line.startswith("usage_usec"))
            return usec * 1000
        return int(text.strip())

    def _leave(self, root: Path, group: Path) -> None:
        for pid in self.pids:
            try:
                (root / "cgroup.procs").write_text(f"{pid}\n")
            except OSError:
                pass
        try:
            group.rmdir()
        except OSError:
            pass


def _threads(t: tunnels.Tunnel) -> dict[int, tuple[int, int]]:
    """tid -> (on-CPU ns, context switches) of every thread of the tunnel's processes."""
    out = {}
    for p in t.procs:
        for task in Path(f"/proc/{p.pid}/task").glob("*"):
            try:
                ns = int((task / "schedstat").read_text().split()[0])
                status = (task / "status").read_text()
            except (OSError, ValueError, IndexError):
                continue
            out[int(task.name)] = (ns, sum(
                int(line.split()[1]) for line in status.splitlines()
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"))))
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu(t: tunnels.Tunnel) -> float:
    """utime+stime of the tunnel's processes (all their threads), in seconds."""
    total = 0
    for p in t.procs:
        try:
            fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)
    return total / _TICK


def _host_busy() -> float:
    """Busy CPU seconds of the whole machine (all cores; includes iperf3 and softirq)."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    v = [int(x) for x in parts]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / _TICK


def _loadavg() -> str:
    """1, 5 and 15 minute load averages: other work on the machine skews the numbers."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
