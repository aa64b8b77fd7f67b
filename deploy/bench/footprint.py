#!/usr/bin/env python3
"""Cold-path footprint: the code a tunnel runs for one ping round trip.

Run as root through footprint.sh. A ping that comes 100 ms after the
last finds the caches cold, and on this kind of machine each cache line
of code a packet needs costs tens of nanoseconds to fetch again; two
tunnels that do the same work differ in RTT by about the number of lines
they touch (see README.md here). Timing that is noisy; counting it is
not: valgrind's callgrind counts instructions exactly, whatever else
the machine does.

For each implementation the answering side (namespace B) runs under
callgrind with instrumentation off; after warm-up pings, it is switched
on for N pings from namespace A and off again. Printed, for the thread
that carries the packets: instructions per round trip, and the distinct
64-byte lines of code it executed on (nearly) every round trip (in at
least 95 % of them), the code a cold round trip must fetch, and the 4
KiB pages those lines are on (each a TLB entry, and a page walk when
cold); then the functions holding most of those lines.

For ztmesh it also says how many symbols of the release build's code
layout (crates/cli/hot-path.order, see build.rs there) this binary has,
and `--write-order FILE` writes a new list: the functions run on at
least 30 % of the round trips, smallest first, as the linker names
them. `--check-order BINARY` only checks that BINARY has every function
of the list (no root, no valgrind; CI runs it on the release build).
Stdlib only.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pingtool  # noqa: E402
import tools  # noqa: E402
from netlab import BenchError, Netlab  # noqa: E402

IMPLS = ["ztmesh", "boringtun-t1", "boringtun", "gotatun"]
LINE = 64
PAGE = 4096
ORDER = pingtool.REPO / "crates" / "cli" / "hot-path.order"
# A function run on this share of the round trips goes in the layout.
ORDER_SHARE = 0.3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="ztmesh,boringtun-t1",
                    help=f"comma-separated subset of: {','.join(IMPLS)} (default ztmesh,boringtun-t1)")
    ap.add_argument("--pings", type=int, default=200, help="round trips counted (default 200)")
    ap.add_argument("--top", type=int, default=15, help="functions listed per tunnel (default 15)")
    ap.add_argument("--keep-logs", action="store_true",
                    help="keep each run's temp dir (logs, callgrind dumps)")
    ap.add_argument("--write-order", metavar="FILE", default="",
                    help=f"write ztmesh's hot functions, for the linker, to FILE "
                         f"(the build reads {ORDER.relative_to(pingtool.REPO)})")
    ap.add_argument("--check-order", metavar="BINARY", default="",
                    help=f"only check that BINARY has every function of "
                         f"{ORDER.relative_to(pingtool.REPO)}; exit 1 when not")
    args = ap.parse_args()
    if args.check_order:
        return _check_order(args.check_order)
    if args.write_order and "ztmesh" not in args.only.split(","):
        ap.error("--write-order needs ztmesh in --only")
    prepared = pingtool.prepare(ap, args, IMPLS, "footprint", tools.ensure_valgrind)
    if isinstance(prepared, int):
        return prepared
    impls, bins = prepared

    results = []
    for index, impl in enumerate(impls):
        lab = Netlab()
        try:
            lab.build()
            results.append(_measure(lab, index, impl, bins, args.pings))
        except BenchError as e:
            print(f"[footprint] {impl}: {e}", file=sys.stderr)
            return 1
        finally:
            lab.close(keep_tmp=args.keep_logs)
    print(_report(results, args.pings, args.top))
    for r in results:
        if r["impl"] == "ztmesh":
            symbols = _symbols(bins["ztmesh"])
            print("\n" + _layout_check(symbols)[0])
            if args.write_order:
                hot = _hot_functions(r, symbols, ORDER_SHARE)
                Path(args.write_order).write_text(_order_text(hot))
                print(f"wrote {len(hot)} functions to {args.write_order}")
    return 0


def _measure(lab: Netlab, index: int, impl: str, bins: dict[str, str], pings: int) -> dict:
    out = lab.tmp / "callgrind.out"
    wrap = ("valgrind", "--tool=callgrind", "--instr-atstart=no", "--dump-instr=yes",
            "--dump-line=no", "--separate-threads=yes", f"--callgrind-out-file={out}")
    tunnel = pingtool.PingedTunnel(lab, index, impl, bins, wrap_b=wrap)
    b = tunnel.t.procs[-1]
    tunnel.ping(30, "0.05")
    lab.run(["callgrind_control", "-i", "on", str(b.pid)], timeout=60)
    tunnel.ping(pings, "0.05")
    lab.run(["callgrind_control", "-i", "off", str(b.pid)], timeout=60)
    lab.run(["callgrind_control", "-d", str(b.pid)], timeout=60)
    dumps = _wait_dumps(out)
    threads = [_parse(p) for p in dumps]
    # The thread that carries the packets encrypts them: one seal per
    # round trip on the answering side (its reply). callgrind takes
    # commands when it next looks, so the window may have missed the
    # first pings; the seals say how many round trips it saw.
    seals = [_calls(th, "seal") for th in threads]
    rtts = max(seals, default=0)
    data = threads[seals.index(rtts)] if threads else {}
    lab.say(f"{impl}: {len(dumps)} thread dump(s); the one that encrypts ran "
            f"{data.get('total', 0):,} instructions for {rtts} replies")
    if rtts < pings // 2:
        raise BenchError(f"only {rtts} of {pings} round trips were counted; try more --pings")
    return {"impl": impl, "rtts": rtts, **data}


def _wait_dumps(out: Path) -> list[Path]:
    """The per-thread files of the dump just asked for (callgrind writes
    them after the command returns)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        dumps = sorted(out.parent.glob(out.name + ".1-*"))
        if dumps and all(p.stat().st_size > 0 for p in dumps):
            time.sleep(1)
            return dumps
        time.sleep(0.5)
    raise BenchError(f"callgrind wrote no dump next to {out}")


# A cost line: the position (absolute, relative or the same), then the
# cost (dumps made with --dump-instr=yes --dump-line=no).
POS = re.compile(r"^(0x[0-9a-fA-F]+|[+-]\d+|\*)\s+(\d+)$")


def _parse(path: Path) -> dict:
    """Instructions by address, and the function of each address, from a
    callgrind dump made with --dump-instr=yes --dump-line=no."""
    names: dict[str, str] = {}
    counts: collections.Counter = collections.Counter()
    fn_of: dict[int, str] = {}
    addr, fn, in_call = 0, "?", False

    def name(val: str) -> str:
        m = re.match(r"\((\d+)\)(?:\s+(.*))?$", val)
        if not m:
            return val
        if m.group(2):
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), m.group(1))

    total = 0
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("positions:") and line.split()[1:] != ["instr"]:
            raise BenchError(f"{path}: positions {line.split()[1:]}, not instr")
        if line.startswith("fn="):
            fn = name(line[3:])
        elif line.startswith("cfn="):
            name(line[4:])
        elif line.startswith("calls="):
            in_call = True
        elif line.startswith("totals:"):
            total = int(line.split()[1])
        else:
            m = POS.match(line)
            if not m:
                continue
            a = m.group(1)
            if a.startswith("0x"):
                addr = int(a, 16)
            elif a[0] in "+-":
                addr += int(a)
            if in_call:  # the cost line of a call: inclusive cost, not this address's
                in_call = False
                continue
            counts[addr] += int(m.group(2))
            fn_of.setdefault(addr, fn)
    return {"total": total, "counts": counts, "fn_of": fn_of}


def _calls(thread: dict, word: str) -> int:
    """How often a ChaCha20-Poly1305 function with `word` in its name ran:
    the count of its first instruction (its entry)."""
    entries: dict[str, int] = {}
    for a in thread["counts"]:
        fn = thread["fn_of"][a]
        if "chacha20_poly1305" in fn and word in fn and a < entries.get(fn, a + 1):
            entries[fn] = a
    return max((thread["counts"][a] for a in entries.values()), default=0)


def _report(results: list[dict], pings: int, top: int) -> str:
    out = [f"Code per ping round trip on the answering side (namespace B), data-carrying thread; "
           f"'lines': distinct {LINE}-byte lines of code run on at least 95 % of the round trips "
           f"counted", ""]
    out.append(f"{'impl':<14}{'rtts':>6}{'instr/rtt':>11}{'lines':>8}{'KiB':>7}{'pages':>7}")
    summaries = []
    for r in results:
        floor = int(r["rtts"] * 0.95)
        hot = [a for a, c in r["counts"].items() if c >= floor]
        lines = {a // LINE for a in hot}
        by_fn: dict[str, set] = collections.defaultdict(set)
        for a in hot:
            by_fn[_short(r["fn_of"][a])].add(a // LINE)
        summaries.append((r["impl"], by_fn))
        pages = {a // PAGE for a in hot}
        out.append(f"{r['impl']:<14}{r['rtts']:>6}{r['total'] / r['rtts']:>11,.0f}"
                   f"{len(lines):>8}{len(lines) * LINE / 1024:>7.1f}{len(pages):>7}")
    for impl, by_fn in summaries:
        out += ["", f"{impl}: functions by lines of code run per round trip"]
        for fn, lines in sorted(by_fn.items(), key=lambda kv: -len(kv[1]))[:top]:
            out.append(f"  {len(lines):>5}  {fn}")
    return "\n".join(out)


# A symbol of the binary: address, size, name as the linker knows it.
Symbol = tuple[int, int, str]


def _symbols(binary: str) -> list[Symbol]:
    """The binary's code symbols, by address (from `nm`)."""
    out = subprocess.run(["nm", "-n", "-S", "--defined-only", binary], capture_output=True,
                         text=True, check=True).stdout
    return _parse_nm(out)


def _parse_nm(out: str) -> list[Symbol]:
    syms = []
    for line in out.splitlines():
        p = line.split()
        if len(p) == 4 and p[2] in "tTwW":
            syms.append((int(p[0], 16), int(p[1], 16), p[3]))
    return sorted(syms)


def _hot_functions(r: dict, symbols: list[Symbol], share: float) -> list[Symbol]:
    """The functions of the binary holding code run on at least `share`
    of the round trips. callgrind gives code addresses as the object file
    has them, as nm does."""
    floor = r["rtts"] * share
    starts = [s[0] for s in symbols]
    found: dict[str, Symbol] = {}
    for a in (a for a, c in r["counts"].items() if c >= floor):
        i = bisect.bisect_right(starts, a) - 1
        if i >= 0 and a < symbols[i][0] + max(symbols[i][1], 1):
            found[symbols[i][2]] = symbols[i]
    return sorted(found.values(), key=lambda s: (s[1], s[2]))


def _order_text(hot: list[Symbol]) -> str:
    """The linker's symbol ordering file: small functions first, so that
    they share pages, then the large ones."""
    head = ["# The packet path's functions, laid out together in release builds",
            "# (crates/cli/build.rs). Written by deploy/bench/footprint.sh",
            f"# --write-order: functions run on at least {ORDER_SHARE:.0%} of the ping "
            "round trips counted, smallest first."]
    return "\n".join(head + [s[2] for s in hot]) + "\n"


def _layout_check(symbols: list[Symbol], demangle: bool = False) -> tuple[str, bool]:
    """How much of the committed layout this binary can still use, and
    whether it has all of it; with `demangle`, the missing functions are
    named (readably, through c++filt when it is there)."""
    if not ORDER.is_file():
        return f"code layout: no {ORDER}", False
    lines = (line.strip() for line in ORDER.read_text().splitlines())
    wanted = [line for line in lines if line and not line.startswith("#")]
    have = {s[2] for s in symbols}
    missing = [w for w in wanted if w not in have]
    said = (f"code layout: {len(wanted) - len(missing)} of the {len(wanted)} functions in "
            f"{ORDER.relative_to(pingtool.REPO)} are in this binary")
    if not missing:
        return said, True
    said += ("; the others were renamed or moved, or their crate's dependencies or the "
             "compiler changed (or RUSTFLAGS replaced the v0 symbol names of "
             ".cargo/config.toml): after a release build, write a new list with "
             f"`sudo deploy/bench/footprint.sh --only ztmesh --write-order "
             f"{ORDER.relative_to(pingtool.REPO)}` and build again")
    if demangle:
        said += "\nnot in this binary:\n" + "\n".join(f"  {n}" for n in _demangled(missing))
    return said, False


def _check_order(binary: str) -> int:
    """--check-order: 0 when `binary` has every function of the list, 1
    when not (named), 2 when there is no such binary."""
    if platform.machine() != "x86_64":
        print(f"code layout list: not checked on {platform.machine()}: the list names "
              "x86_64 functions, and crates/cli/build.rs applies it only there")
        return 0
    if not Path(binary).is_file():
        print(f"footprint.py: no binary at {binary}; build it first with "
              "`cargo build --release --locked -p ztmesh`", file=sys.stderr)
        return 2
    said, complete = _layout_check(_symbols(binary), demangle=True)
    print(said)
    return 0 if complete else 1


def _demangled(names: list[str]) -> list[str]:
    """`names` as c++filt writes them (Rust's v0 names included), or as
    they are when c++filt is missing."""
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names) + "\n", capture_output=True,
                             text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return names
    return out if len(out) == len(names) else names


def _short(fn: str) -> str:
    """A function name without its generic arguments and closure noise."""
    fn = re.sub(r"<impl [^>]*>::", "", fn)
    fn = fn.replace("::{{closure}}", "")
    return fn if len(fn) <= 110 else fn[:107] + "..."


if __name__ == "__main__":
    sys.exit(main())
