"""Parsing `perf script` output of scheduler and raw system call
tracepoints, for stages.py and roundtrips.py. Stdlib only."""

from __future__ import annotations

import re

# One event: command, thread id, [CPU], time in seconds, event name, the rest.
EVENT = re.compile(r"^\s*(.*?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+([\w:]+):\s+(.*)$")
# A raw system call: its number and, on exit, its return value.
CALL = re.compile(r"NR (\d+)(?: = (-?\d+))?")
# sched_switch's two threads.
PID = re.compile(r"(prev|next)_pid=(\d+)")
# sched_waking's woken thread.
WOKEN = re.compile(r" pid=(\d+)")

Event = tuple[str, str, str, float, str, str]


def events(lines: list[str]) -> list[Event]:
    """perf script's lines as (command, thread id, CPU, time in us, event,
    the rest)."""
    out = []
    for line in lines:
        m = EVENT.match(line)
        if m:
            comm, tid, cpu, stamp, event, rest = m.groups()
            out.append((comm, tid, cpu, float(stamp) * 1e6, event, rest))
    return out
