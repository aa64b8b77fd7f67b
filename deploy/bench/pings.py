"""Ping RTT measured in interleaved batches (no I/O here; bench.py runs ping).

A round's mean of 50 pings sent one tunnel after another moved by more
between rounds than the gap between two tunnels, because the machine's
pace drifts over the minutes a round takes. So every tunnel's pings of a
round are sent in short batches that take turns, starting with a different
tunnel each batch: drift then lands on all of them alike. A tunnel's figure
for the round is the mean of all its replies, pooled over its batches.
"""

from __future__ import annotations

import re
import statistics

# Batches per tunnel per round, and echo requests per batch (0.1 s apart).
BATCHES = 10
PER_BATCH = 10
# A reply this slow (ms) waited for the scheduler (a 4 ms tick at HZ=250)
# rather than for the tunnel; a few of them set a round's mean.
SLOW_MS = 1.0

_RTT = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)/[\d.]+ ms")
_REPLY = re.compile(r"icmp_seq=\d+ .*?time=([\d.]+) ms")
_COUNTS = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")


def turns(names: list[str], batch: int) -> list[str]:
    """The order the tunnels take in batch `batch`: rotated by one each
    batch, so none always follows the same one."""
    if not names:
        return []
    k = batch % len(names)
    return names[k:] + names[:k]


def parse(stdout: str) -> dict:
    """One ping run's summary: sent, received, and (when any reply came)
    min/mean/max in ms, with each reply's time when ping printed them (not
    with `-q`). Raises ValueError when the counts line is missing."""
    counts = _COUNTS.search(stdout)
    if not counts:
        raise ValueError(f"ping: no 'packets transmitted' line in: {stdout[-300:]!r}")
    out = {"sent": int(counts.group(1)), "received": int(counts.group(2))}
    rtt = _RTT.search(stdout)
    if out["received"] and not rtt:
        raise ValueError(f"ping: {out['received']} replies but no rtt line in: {stdout[-300:]!r}")
    if rtt:
        out.update(min=float(rtt.group(1)), mean=float(rtt.group(2)), max=float(rtt.group(3)))
    times = [float(t) for t in _REPLY.findall(stdout)]
    if times:
        out["times"] = times
    return out


def pool(batches: list[dict]) -> dict:
    """One tunnel's round from its batches: the mean over every reply
    (each batch's mean weighted by its replies), the least minimum, the
    greatest maximum, and the loss over all requests sent; when every
    batch gave its replies' times, also their median and how many took
    over SLOW_MS (the mean is the target; these tell a round whose mean a
    few slow replies set from one that is slow throughout)."""
    sent = sum(b["sent"] for b in batches)
    got = [b for b in batches if b["received"]]
    received = sum(b["received"] for b in got)
    if not received:
        return {"error": f"ping: no reply to any of {sent} requests in {len(batches)} batches"}
    return {"rtt_ms": round(sum(b["mean"] * b["received"] for b in got) / received, 4),
            "rtt_min_ms": min(b["min"] for b in got), "rtt_max_ms": max(b["max"] for b in got),
            "ping_loss_pct": round(100.0 * (sent - received) / sent, 2) if sent else None,
            "pings": sent, "ping_batches": len(batches), **_spread(got, received)}


def _spread(batches: list[dict], received: int) -> dict:
    """The replies' median and slow count; nothing when a batch's times are
    missing or do not match its replies (duplicates, `-q`)."""
    times = [t for b in batches for t in b.get("times", [])]
    if len(times) != received:
        return {}
    return {"rtt_median_ms": round(statistics.median(times), 4),
            "ping_slow": sum(t > SLOW_MS for t in times)}
