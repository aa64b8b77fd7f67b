"""The printed report: a summary of medians, then per metric min/median/max of
every implementation and the ratio of its median to every other's. (The
whole-machine CPU, `host_cpu_s`, is in the JSON only: on a small machine it
is every core for the whole test, whatever the tunnel.)"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import pings

# (metric key in a result, label, unit, better)
METRICS = [("mbps", "goodput", "Mbit/s", "higher"),
           ("loss_pct", "loss at the receiver", "%", "lower"),
           ("tunnel_cpu_s", "tunnel processes' CPU", "s", "lower"),
           ("rtt_ms", f"ping RTT (mean of {pings.BATCHES * pings.PER_BATCH}, batches in turns)", "ms",
            "lower"),
           ("rtt_median_ms", "ping RTT, median reply", "ms", "lower"),
           ("ping_slow", f"ping replies over {pings.SLOW_MS:g} ms", "count", "lower"),
           ("idle_cpu_ms_per_min", "CPU with no traffic", "ms per minute", "lower"),
           ("idle_wakeups_per_s", "wake-ups with no traffic", "per second", "lower")]

# The metric a test's column of the summary shows, and the test each
# metric belongs to (None: any iperf3 test).
SUMMARY = {"ping": "rtt_ms", "idle": "idle_cpu_ms_per_min"}
OWNER = {"rtt_ms": "ping", "rtt_median_ms": "ping", "ping_slow": "ping",
         "idle_cpu_ms_per_min": "idle", "idle_wakeups_per_s": "idle"}


def render(meta: dict, results: list[dict]) -> str:
    impls = [i for i in meta["impls"] if any(r["impl"] == i for r in results)]
    tests = meta["tests"]
    out = [_header(meta)]
    out += ["", "Medians (goodput in Mbit/s; ping: mean RTT in ms; idle: CPU ms per minute "
                "with no traffic)"]
    out.append(_row(["impl", *tests], first=13))
    for impl in impls:
        cells = []
        for t in tests:
            key = SUMMARY.get(t, "mbps")
            m = _median(results, impl, t, key)
            cells.append("-" if m is None else f"{m:.3f}" if key == "rtt_ms"
                         else f"{m:.1f}" if t == "idle" else f"{m:.0f}")
        out.append(_row([impl, *cells], first=13))

    for test in tests:
        for key, label, unit, better in METRICS:
            if not _applies(key, test):
                continue
            vals = {i: _values(results, i, test, key) for i in impls}
            if not any(vals.values()):
                continue
            out += ["", f"{test}: {label}, {unit} ({better} is better); ratio = row median / "
                        "column median"]
            out.append(_row(["impl", "min", "median", "max", "n", *[f"/{_abbr(i)}" for i in impls]],
                            first=13))
            med = {i: statistics.median(v) if v else None for i, v in vals.items()}
            for i in impls:
                v = vals[i]
                if not v:
                    out.append(_row([i, "-", "-", "-", "0", *["-"] * len(impls)], first=13))
                    continue
                ratios = ["-" if not med[j] or med[i] is None else f"{med[i] / med[j]:.2f}"
                          for j in impls]
                out.append(_row([i, _fmt(min(v)), _fmt(med[i]), _fmt(max(v)), str(len(v)),
                                 *ratios], first=13))
    if "ping" in tests:
        out += ping_ratios([results], impls)
    errs = [r for r in results if r.get("error")]
    if errs:
        out += ["", f"{len(errs)} failed measurement(s):"]
        out += [f"  round {r['round']} {r['impl']} {r['test']}: {r['error'][:200]}" for r in errs]
    return "\n".join(out)


def ping_ratios(runs: list[list[dict]], impls: list[str], target: str = "ztmesh") -> list[str]:
    """`target`'s mean ping over each other tunnel's, every round of every
    run pooled, with the interval of pings.mean_ratio; nothing when the
    runs have no batch means (JSON written before they were kept)."""
    rows = []
    for other in (i for i in impls if i != target):
        pairs = _batch_pairs(runs, target, other)
        r = pings.mean_ratio(pairs)
        if r:
            rows.append(_row([other, str(r["pairs"]), f"{r['ratio']:.3f}", f"{r['low']:.3f}",
                              f"{r['high']:.3f}"], first=13))
    if not rows:
        return []
    return ["", f"ping: {target}'s mean RTT over each other tunnel's, all rounds pooled, with a 95 % "
                "interval (bootstrap over the turns: each pair is the two tunnels' batches of one "
                "turn)",
            _row(["impl", "pairs", "ratio", "low", "high"], first=13), *rows]


def _batch_pairs(runs: list[list[dict]], a: str, b: str) -> list[tuple[float, int, float, int]]:
    """The batches of `a` and `b` that ran in the same turn of the same
    round, as (a's mean, a's replies, b's mean, b's replies)."""
    pairs = []
    for results in runs:
        by = {(r["impl"], r["round"]): r.get("ping_batch_means") for r in results
              if r.get("test") == "ping" and not r.get("error")}
        for rnd in sorted(r for impl, r in by if impl == a):
            mine, theirs = by[(a, rnd)], by.get((b, rnd))
            if mine and theirs:
                pairs += [(ma, na, mb, nb) for (ma, na), (mb, nb) in zip(mine, theirs)]
    return pairs


def _applies(key: str, test: str) -> bool:
    """Ping and idle have metrics of their own; iperf3 tests the rest (loss: UDP only)."""
    if test in SUMMARY:
        return OWNER.get(key) == test
    return key not in OWNER and (key != "loss_pct" or "udp" in test)


def _header(meta: dict) -> str:
    lines = [f"ztmesh bench: {meta['rounds']} round(s) x {meta['seconds']} s per iperf3 test, "
             f"{meta['cpus']} CPUs ({meta['cpu_model']}), kernel {meta['kernel']}, "
             f"overlay MTU {meta['overlay_mtu']}, UDP payload {meta['udp_len']} B"
             + (f" ({meta['udp_len_relayed']} B relayed)" if 'udp_len_relayed' in meta else "")
             + ", "
             f"took {meta.get('elapsed_seconds', '?')} s",
             f"  load average at start: {meta.get('loadavg_start')}, at end: "
             f"{meta.get('loadavg_end')} (other work on the machine skews every number)"]
    for k, v in meta.get("versions", {}).items():
        lines.append(f"  {k}: {v}")
    zt = meta.get("tunnels", {}).get("ztmesh")
    if zt:
        lines.append(f"  ztmesh policy: {zt.get('rules')} rules in {zt.get('segments')} segments, "
                     f"{zt.get('rules_matching_bench_pair')} of them from a segment of the client "
                     f"to one of the server (the iperf3 rule is last)")
    st = meta.get("ztmesh_status_b")
    if st:
        lines.append(f"  ztmesh server-side daemon at the end: {st['rules_with_hit_counters']} "
                     f"rules in its filter, new flows by rule {st['rule_hits_nonzero']}, "
                     f"drops {({k: v for k, v in (st['drops'] or {}).items() if v}) or 'none'}")
    return "\n".join(lines)


def _values(results: list[dict], impl: str, test: str, key: str) -> list[float]:
    return [r[key] for r in results if r["impl"] == impl and r["test"] == test
            and not r.get("error") and isinstance(r.get(key), (int, float))]


def _median(results: list[dict], impl: str, test: str, key: str) -> float | None:
    v = _values(results, impl, test, key)
    return statistics.median(v) if v else None


def _fmt(x: float) -> str:
    if isinstance(x, int) or abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def _abbr(impl: str) -> str:
    return {"boringtun": "bt", "boringtun-t1": "bt-t1", "wireguard-go": "wg-go",
            "wg-kernel": "wg-kern", "gotatun": "gota", "ztmesh": "zt",
            "ztmesh-relay": "zt-rly"}.get(impl, impl)


def _row(cells: list[str], first: int = 13, width: int = 9) -> str:
    return cells[0].ljust(first) + "".join(c.rjust(width) for c in cells[1:])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Print a bench report again from its JSON; with several files, the ping "
                    "ratios of all of them pooled.")
    ap.add_argument("files", nargs="+", type=Path, help="bench-*.json from deploy/bench/results")
    args = ap.parse_args(argv)
    runs = []
    for f in args.files:
        try:
            data = json.loads(f.read_text())
            runs.append((f, data["meta"], data["results"]))
        except (OSError, ValueError, KeyError) as e:
            print(f"report.py: cannot read {f}: {e}", file=sys.stderr)
            return 2
    if len(runs) == 1:
        print(render(runs[0][1], runs[0][2]))
        return 0
    impls = [i for i in runs[0][1]["impls"] if all(i in meta["impls"] for _, meta, _ in runs)]
    for f, meta, _ in runs:
        print(f"{f.name}: {meta.get('rounds')} round(s), started {meta.get('started')}, "
              f"load at start {meta.get('loadavg_start')}")
    lines = ping_ratios([results for _, _, results in runs], impls)
    print("\n".join(lines) if lines else "no ping batch means in these files (written before "
                                         "the bench kept them, or without the ping test)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
