#!/usr/bin/env python3
"""Where a ping's round trip goes: the stages of the packet path, timed.

Run as root through stages.sh. For each implementation a tunnel comes up
between the two namespaces as in bench.py; after warm-up pings, `perf
record` takes the scheduler's and the system calls' tracepoints on all
CPUs while N pings go from namespace A, 0.1 s apart (the caches go cold
between them, as in bench.py's ping test). perf needs no hardware
counters for this, so it works in a VM.

From the trace, for the threads of the two tunnel processes:
- the user time of each stage: from the end of one system call of the
  packet path to the start of the next (woken -> TUN read is the
  dispatch after epoll; TUN read -> UDP send is route, filter and
  encryption; UDP receive -> TUN write is decryption, cryptokey routing
  and the filter);
- the kernel time of each of those system calls that moved a packet;
- the tail of a turn: from the end of the turn's last call that sent a
  packet on (UDP send, TUN write) until the thread went to sleep, when
  nothing preempted it: the reads that find nothing and the wait's own
  entry. On one CPU the thread the packet woke runs only after it. By
  the last send: a turn that ends with a TUN write is, in these pings,
  side A's delivering the reply to ping;
- how long a woken tunnel thread waited to run, by where it ran: on a
  CPU that was idle (a halted virtual CPU must be woken first) or busy;
  the median and the mean (the mean is what a mean RTT pays);
- how the scheduler ran each round trip (roundtrips.py): whether ping
  was preempted before it slept, how many woken threads ran on an idle
  CPU, and the stalls of the tunnel threads.
A round trip passes each stage once on each side. Medians, with how
often each was seen. Stdlib only.
"""

from __future__ import annotations

import argparse
import collections
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import perftrace  # noqa: E402
import pingtool  # noqa: E402
import roundtrips  # noqa: E402
import tools  # noqa: E402
from netlab import BenchError, Netlab  # noqa: E402

IMPLS = ["ztmesh", "boringtun-t1", "boringtun", "gotatun", "wireguard-go"]

# x86_64 system call numbers of the packet path, by what they do there.
# The TUN device is read and written with read(2)/write(2) (or readv and
# writev); the UDP socket with the socket calls.
SYSCALLS = {0: "TUN read", 19: "TUN read", 1: "TUN write", 20: "TUN write",
            45: "UDP recv", 47: "UDP recv", 299: "UDP recv",
            44: "UDP send", 46: "UDP send", 307: "UDP send",
            232: "wait", 281: "wait", 441: "wait"}
FILTER = " || ".join(f"id == {n}" for n in sorted(SYSCALLS))
# The stages reported, in the order a request and its reply pass them.
STAGES = [("wait", "TUN read"), ("TUN read", "UDP send"), ("wait", "UDP recv"),
          ("UDP recv", "TUN write"), ("TUN write", "TUN read")]
# The calls that send a packet on, ending a turn's work when last.
SENDS = {"UDP send", "TUN write"}
# sched_switch's state of the thread it switches out.
PREV_STATE = re.compile(r"prev_state=(\S+)")
# The width of the report's row labels.
LABEL = 56


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="ztmesh,boringtun-t1",
                    help=f"comma-separated subset of: {','.join(IMPLS)} (default ztmesh,boringtun-t1)")
    ap.add_argument("--pings", type=int, default=200, help="round trips traced (default 200)")
    ap.add_argument("--keep-logs", action="store_true", help="keep each run's temp dir (logs, trace)")
    args = ap.parse_args()
    prepared = pingtool.prepare(ap, args, IMPLS, "stages", tools.ensure_perf)
    if isinstance(prepared, int):
        return prepared
    impls, bins = prepared

    results = {}
    for index, impl in enumerate(impls):
        lab = Netlab()
        try:
            lab.build()
            results[impl] = _measure(lab, index, impl, bins, args.pings)
        except BenchError as e:
            print(f"[stages] {impl}: {e}", file=sys.stderr)
            return 1
        finally:
            lab.close(keep_tmp=args.keep_logs)
    print(_report(results, args.pings))
    return 0


def _measure(lab: Netlab, index: int, impl: str, bins: dict[str, str], pings: int) -> dict:
    tunnel = pingtool.PingedTunnel(lab, index, impl, bins)
    tunnel.ping(30, "0.05")
    tids = _threads(p.pid for p in tunnel.t.procs)
    trace = lab.tmp / "perf.data"
    events = []
    for tracepoint, flt in (("sched:sched_waking", None), ("sched:sched_switch", None),
                            ("raw_syscalls:sys_enter", FILTER), ("raw_syscalls:sys_exit", FILTER)):
        events += ["-e", tracepoint] + (["--filter", flt] if flt else []) + ["--exclude-perf"]
    perf = subprocess.Popen(["perf", "record", "-a", "-q", *events, "-o", str(trace)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(2)  # perf has its tracepoints on
        if perf.poll() is not None:
            raise BenchError(f"perf record exited with {perf.returncode}: "
                             f"{perf.stderr.read().decode(errors='replace')[-500:]}")
        tunnel.ping(pings, "0.1")
    finally:
        perf.send_signal(signal.SIGINT)
        try:
            perf.wait(timeout=60)
        except subprocess.TimeoutExpired:
            perf.kill()
            perf.wait()
    script = subprocess.run(["perf", "script", "-i", str(trace)], capture_output=True, text=True,
                            errors="replace", timeout=600)
    if script.returncode != 0:
        raise BenchError(f"perf script failed: {script.stderr[-500:]}")
    lab.say(f"{impl}: {len(tids)} threads traced")
    events = perftrace.events(script.stdout.splitlines())
    return {**_analyse(events, tids), "trips": roundtrips.analyse(events, tids, set(SYSCALLS))}


def _threads(pids) -> set[str]:
    """The threads of the processes in the process groups of `pids` (each
    tunnel process was started in a group of its own)."""
    groups = {str(p) for p in pids}
    tids: set[str] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            pgrp = stat[stat.rfind(")") + 2:].split()[2]
            if pgrp in groups:
                tids.update(t.name for t in (proc / "task").iterdir())
        except OSError:
            continue  # gone meanwhile
    return tids


def _analyse(events: list[perftrace.Event], tids: set[str]) -> dict:
    """Stage times (user, between system calls), system call times and
    wake-up delays of the traced threads, in microseconds."""
    user: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    kernel: dict[str, list[float]] = collections.defaultdict(list)
    wake: dict[str, list[float]] = collections.defaultdict(list)
    tails: dict[str, list[float]] = collections.defaultdict(list)
    entered: dict[str, tuple[str, float]] = {}
    returned: dict[str, tuple[str, float]] = {}
    waking: dict[str, float] = {}
    # Each thread's last call that sent a packet on, and when it returned.
    sent: dict[str, tuple[str, float]] = {}
    for _comm, tid, _cpu, t, event, rest in events:
        if event == "sched:sched_switch":
            pids = dict(perftrace.PID.findall(rest))
            prev = pids.get("prev", "")
            if prev in sent:
                # Asleep: the turn's tail; preempted: others' time is in it.
                what, since = sent.pop(prev)
                state = PREV_STATE.search(rest)
                if state and state.group(1).startswith(("S", "D")):
                    tails[what].append(t - since)
            if pids.get("next") in waking:
                # Where the woken thread ran: a CPU that was idle (a
                # halted virtual CPU had to be woken first) or busy.
                at = waking.pop(pids["next"])
                wake["idle CPU" if pids.get("prev") == "0" else "busy CPU"].append(t - at)
            continue
        if event == "sched:sched_waking":
            w = perftrace.WOKEN.search(rest)
            if w and w.group(1) in tids:
                waking[w.group(1)] = t
            continue
        if tid not in tids:
            continue
        call = perftrace.CALL.match(rest)
        if not call or int(call.group(1)) not in SYSCALLS:
            continue
        what = SYSCALLS[int(call.group(1))]
        if event == "raw_syscalls:sys_enter":
            if tid in returned:
                prev_what, at = returned.pop(tid)
                user[(prev_what, what)].append(t - at)
            entered[tid] = (what, t)
        elif event == "raw_syscalls:sys_exit" and call.group(2) is not None:
            ret = int(call.group(2))
            began = entered.pop(tid, None)
            if ret > 0:
                # A call that moved a packet (or a wait that found one).
                returned[tid] = (what, t)
                if what in SENDS:
                    sent[tid] = (what, t)
                elif what != "wait":
                    sent.pop(tid, None)
                if began and began[0] == what and what != "wait":
                    kernel[what].append(t - began[1])
            else:
                returned.pop(tid, None)
    return {"user": user, "kernel": kernel, "wake": wake, "tail": tails}


def _cell(samples: list[float], mean: bool = False) -> str:
    if not samples:
        return "-"
    if mean:
        return f"{statistics.median(samples):.1f}, {statistics.mean(samples):.0f} ({len(samples)})"
    return f"{statistics.median(samples):.1f} ({len(samples)})"


def _report(results: dict[str, dict], pings: int) -> str:
    impls = list(results)
    width = max(24, *(len(i) + 2 for i in impls))
    head = f"{'':<{LABEL}}" + "".join(f"{i:>{width}}" for i in impls)
    out = [f"Stages of the packet path, both tunnel processes, {pings} pings 0.1 s apart: "
           f"median in microseconds (times seen); a round trip passes each stage once on "
           f"each side", "", "user time between system calls", head]
    for a, b in STAGES:
        out.append(f"  {a + ' -> ' + b:<{LABEL - 2}}" +
                   "".join(f"{_cell(results[i]['user'].get((a, b), [])):>{width}}" for i in impls))
    out += ["", "kernel time of the system calls that moved a packet", head]
    for what in ("TUN read", "UDP send", "UDP recv", "TUN write"):
        out.append(f"  {what:<{LABEL - 2}}" +
                   "".join(f"{_cell(results[i]['kernel'].get(what, [])):>{width}}" for i in impls))
    out += ["", "a turn's tail: its last packet sent on -> asleep, not preempted", head]
    for what in ("UDP send", "TUN write"):
        out.append(f"  {'after a ' + what:<{LABEL - 2}}" +
                   "".join(f"{_cell(results[i]['tail'].get(what, [])):>{width}}" for i in impls))
    out += ["", "a woken tunnel thread waited to run: median, mean (times seen)", head]
    for kind in ("idle CPU", "busy CPU"):
        out.append(f"  {'on an ' + kind if kind[0] == 'i' else 'on a ' + kind:<{LABEL - 2}}" +
                   "".join(f"{_cell(results[i]['wake'].get(kind, []), mean=True):>{width}}"
                           for i in impls))
    out += roundtrips.report({i: results[i]["trips"] for i in impls}, LABEL, width)
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
