"""Ping RTT measured in interleaved batches (no I/O here; bench.py runs ping).

A round's mean of 50 pings sent one tunnel after another moved by more
between rounds than the gap between two tunnels, because the machine's
pace drifts over the minutes a round takes. So every tunnel's pings of a
round are sent in short batches that take turns, starting with a different
tunnel each batch: drift then lands on all of them alike. A tunnel's figure
for the round is the mean of all its replies, pooled over its batches.
"""

from __future__ import annotations

import random
import re
import statistics

# Batches per tunnel per round, and echo requests per batch (0.1 s apart).
# 20 since 2026-12-07 (10 before): the ping ratio's interval (mean_ratio)
# narrows with the number of turns.
BATCHES = 20
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
            "pings": sent, "ping_batches": len(batches),
            # Each batch's mean and replies, in the order of the turns: what
            # mean_ratio pairs with another tunnel's batch of the same turn.
            "ping_batch_means": [[b.get("mean"), b["received"]] for b in batches],
            **_spread(got, received)}


def _spread(batches: list[dict], received: int) -> dict:
    """The replies' median and slow count; nothing when a batch's times are
    missing or do not match its replies (duplicates, `-q`)."""
    times = [t for b in batches for t in b.get("times", [])]
    if len(times) != received:
        return {}
    return {"rtt_median_ms": round(statistics.median(times), 4),
            "ping_slow": sum(t > SLOW_MS for t in times)}


# Resamples of mean_ratio's bootstrap; the seed is fixed, so a report
# printed again from the same JSON gives the same interval.
RESAMPLES = 4000


def mean_ratio(pairs: list[tuple[float, int, float, int]], resamples: int = RESAMPLES,
               seed: int = 0) -> dict | None:
    """Tunnel A's mean reply over tunnel B's, and a 95 % interval for it.

    `pairs` holds, for each turn in which both sent a batch, A's batch mean
    and replies, then B's (the two batches ran seconds apart, so the
    machine's pace was about the same for both). The ratio is of the means
    over every reply, as the bench reports them. The interval is a
    percentile bootstrap over the pairs: the turns are drawn again with
    replacement, `resamples` times, and the ratio taken each time; the
    2.5th and 97.5th percentiles bound it. Whole batches are drawn, not
    single replies, because the replies of one batch share its moment of
    the machine. Pairs where either batch got no reply are left out;
    None when none is left."""
    use = [(a, na, b, nb) for a, na, b, nb in pairs
           if na and nb and a is not None and b is not None]
    if not use:
        return None

    def ratio(sample: list[tuple[float, int, float, int]]) -> float:
        a = sum(m * n for m, n, _, _ in sample) / sum(n for _, n, _, _ in sample)
        b = sum(m * n for _, _, m, n in sample) / sum(n for _, _, _, n in sample)
        return a / b

    rng = random.Random(seed)
    draws = sorted(ratio(rng.choices(use, k=len(use))) for _ in range(resamples))
    return {"ratio": ratio(use), "low": draws[int(0.025 * (resamples - 1))],
            "high": draws[int(0.975 * (resamples - 1))], "pairs": len(use)}
