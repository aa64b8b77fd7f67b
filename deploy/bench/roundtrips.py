"""How the scheduler ran each ping round trip, from stages.py's trace.

On an idle machine a tunnel's mean ping is set less by its own code than
by where the kernel runs each woken thread: a round trip wakes four
threads (the tunnel on A, the tunnel on B, A again, the pinging process),
and a woken thread put on an idle CPU runs only once that CPU is out of
its idle state; a halted virtual CPU must first be woken by the host
(80 to 350 us here, against 5 to 15 on a CPU that is running). Whether
that happens turns on a race at the first wake-up: when the tunnel
thread that ping woke runs at once, preempting ping before ping has gone
to sleep in its receive call, the tunnel's CPU holds two runnable
threads when the tunnel sends to B, and the kernel puts B's thread on
the idle CPU. When ping sleeps first, the whole round trip usually stays
on one CPU.

From the same `perf record` as the stage times (scheduler tracepoints
and the packet path's system calls on all CPUs), for every round trip of
the pinging process (its send to its receive that returned the reply):
its time, whether ping was preempted (switched out runnable) before it
slept, and how many of the round trip's woken tunnel threads ran on a CPU
that had been idle. Ping's own wake-up by the reply is counted apart:
ping times a reply by the kernel's receive stamp (SO_TIMESTAMP; `-U`
would time it in user space), so where ping itself runs is not in the
RTT it prints, though it is in this trace's time. Also the stalls of the tunnel threads: user time between
two packet system calls of more than 100 us with no switch in between
(no system call, no scheduling: the virtual CPU itself did not run).
Tracing adds a few microseconds to every system call and switch, so the
times are for comparing the rows and the tunnels, not for quoting as
RTTs. Stdlib only.
"""

from __future__ import annotations

import collections
import re
import statistics

from perftrace import CALL, PID, WOKEN, Event

# The pinging process's send and receive system calls (x86_64).
SEND = {44, 46}
RECV = {45, 47, 299}
# User time between two packet system calls above this is a stall.
STALL_US = 100.0
STATE = re.compile(r"prev_state=(\S+)")


def analyse(events: list[Event], tids: set[str],
            packet_calls: set[int]) -> dict:
    """events: (command, thread id, CPU, time in us, event, the rest), in
    time order; tids: the tunnel processes' threads; packet_calls: the
    system calls of the packet path (the stalls are looked for between
    two of them, after one that moved a packet or a wait that found one)."""
    carriers = _carriers(events, tids)
    rtts: dict[tuple[bool, int], list[float]] = collections.defaultdict(list)
    stalls: list[float] = []
    waking: set[str] = set()
    # The round trip under way: its start, the pinging thread, whether
    # that thread was preempted (None until it first left the CPU), the
    # tunnel threads' idle-CPU wake-ups so far and whether ping's own
    # wake-up ran on an idle CPU.
    trip: dict | None = None
    ping_idle = 0
    last_exit: dict[str, float] = {}
    for comm, tid, _cpu, t, event, rest in events:
        if event == "sched:sched_waking":
            woken = WOKEN.search(rest)
            if woken:
                waking.add(woken.group(1))
            continue
        if event == "sched:sched_switch":
            pids = dict(PID.findall(rest))
            prev, nxt = pids.get("prev"), pids.get("next")
            last_exit.pop(prev or "", None)
            if trip is not None:
                if prev == trip["tid"] and trip["preempted"] is None:
                    state = STATE.search(rest)
                    trip["preempted"] = bool(state and state.group(1).startswith("R"))
                if prev == "0" and nxt in waking and nxt in carriers:
                    trip["idle"] += 1
                elif prev == "0" and nxt in waking and nxt == trip["tid"]:
                    trip["ping_idle"] = True
            waking.discard(nxt or "")
            continue
        call = CALL.match(rest)
        if not call:
            continue
        nr = int(call.group(1))
        if tid in tids:
            if tid not in carriers or nr not in packet_calls:
                continue
            if event == "raw_syscalls:sys_exit":
                if call.group(2) is not None and int(call.group(2)) > 0:
                    last_exit[tid] = t
                else:
                    last_exit.pop(tid, None)
            elif tid in last_exit:
                gap = t - last_exit.pop(tid)
                if gap > STALL_US:
                    stalls.append(gap)
            continue
        if comm != "ping":
            continue
        if event == "raw_syscalls:sys_enter" and nr in SEND:
            trip = {"start": t, "tid": tid, "preempted": None, "idle": 0, "ping_idle": False}
        elif (event == "raw_syscalls:sys_exit" and nr in RECV and trip is not None
              and tid == trip["tid"] and call.group(2) is not None and int(call.group(2)) > 0):
            rtts[(bool(trip["preempted"]), min(trip["idle"], 2))].append(t - trip["start"])
            ping_idle += trip["ping_idle"]
            trip = None
    return {"rtts": rtts, "stalls": stalls, "ping_idle": ping_idle}


def _carriers(events: list[Event], tids: set[str]) -> set[str]:
    """The tunnel threads that carry the pings: the ones the pinging
    process wakes, and the tunnel threads those wake (the other side),
    each on at least a quarter of the round trips. The daemons' other
    threads (control connection, timers), which a data plane wakes now
    and then, are left out."""
    sends = sum(1 for comm, _tid, _cpu, _t, event, rest in events
                if comm == "ping" and event == "raw_syscalls:sys_enter"
                and (m := CALL.match(rest)) and int(m.group(1)) in SEND)
    carriers: set[str] = set()
    while True:
        woken: collections.Counter = collections.Counter()
        for comm, tid, _cpu, _t, event, rest in events:
            if event == "sched:sched_waking" and (comm == "ping" or tid in carriers):
                m = WOKEN.search(rest)
                if m and m.group(1) in tids:
                    woken[m.group(1)] += 1
        found = carriers | {t for t, n in woken.items() if 4 * n >= sends}
        if found == carriers:
            return carriers
        carriers = found


def report(results: dict[str, dict], label: int, width: int) -> list[str]:
    """The rows for stages.py's report: labels `label` wide, then one
    column `width` wide per tunnel."""
    impls = list(results)
    head = f"{'':<{label}}" + "".join(f"{i:>{width}}" for i in impls)
    out = ["", "round trips by how the scheduler ran them: count, median/mean time in us "
               "(from the trace)", head]

    def cell(samples: list[float]) -> str:
        if not samples:
            return "-"
        return f"{len(samples)}: {statistics.median(samples):.0f}/{statistics.mean(samples):.0f}"

    for preempted in (False, True):
        for idle in (0, 1, 2):
            text = (f"  ping {'preempted' if preempted else 'slept first'}, "
                     f"{idle}{'+' if idle == 2 else ''} tunnel idle-CPU wake-up"
                     f"{'' if idle == 1 else 's'}")
            out.append(f"{text:<{label}}" + "".join(
                f"{cell(results[i]['rtts'].get((preempted, idle), [])):>{width}}" for i in impls))
    out.append(f"{'  all':<{label}}" + "".join(
        f"{cell([x for v in results[i]['rtts'].values() for x in v]):>{width}}" for i in impls))

    def per_trip(i: str) -> str:
        trips = sum(len(v) for v in results[i]["rtts"].values())
        if not trips:
            return "-"
        idle = sum(min(k[1], 2) * len(v) for k, v in results[i]["rtts"].items())
        return f"{idle / trips:.2f}"

    out.append(f"{'  tunnel idle-CPU wake-ups per round trip (2+ as 2)':<{label}}" +
               "".join(f"{per_trip(i):>{width}}" for i in impls))

    def ping_idle(i: str) -> str:
        trips = sum(len(v) for v in results[i]["rtts"].values())
        return f"{results[i].get('ping_idle', 0)} of {trips}" if trips else "-"

    out.append(f"{'  ping woken on an idle CPU (not in its RTT)':<{label}}" +
               "".join(f"{ping_idle(i):>{width}}" for i in impls))

    def stalls(i: str) -> str:
        trips = sum(len(v) for v in results[i]["rtts"].values())
        found = results[i]["stalls"]
        if not trips:
            return "-"
        return f"{len(found)}: {sum(found) / trips:.0f} us/trip"

    out.append(f"{'  tunnel stalls > 100 us (no switch)':<{label}}" +
               "".join(f"{stalls(i):>{width}}" for i in impls))
    return out
