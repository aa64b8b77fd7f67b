"""roundtrips.py on a hand-made trace: two round trips, one that stayed on
one CPU and one where ping was preempted and B's thread ran on an idle
CPU after a stall. Run: python3 -m unittest discover -s deploy/bench"""

from __future__ import annotations

import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import roundtrips  # noqa: E402

PING, A, B, OTHER = "100", "200", "300", "400"
TIDS = {A, B, OTHER}
COMM = {PING: "ping", A: "ztmesh-dataplan", B: "ztmesh-dataplan", OTHER: "tokio-rt-worker",
        "0": "swapper/1"}
PACKET_CALLS = {0, 1, 44, 47, 232}


def enter(t: float, tid: str, nr: int) -> tuple:
    return (COMM[tid], tid, "000", t, "raw_syscalls:sys_enter", f"NR {nr} (3, 0, 0)")


def leave(t: float, tid: str, nr: int, ret: int) -> tuple:
    return (COMM[tid], tid, "000", t, "raw_syscalls:sys_exit", f"NR {nr} = {ret}")


def wake(t: float, by: str, tid: str) -> tuple:
    return (COMM[by], by, "000", t, "sched:sched_waking",
            f"comm={COMM[tid]} pid={tid} prio=120 target_cpu=000")


def switch(t: float, prev: str, state: str, nxt: str, cpu: str = "000") -> tuple:
    return (COMM[prev], prev, cpu, t, "sched:sched_switch",
            f"prev_comm={COMM[prev]} prev_pid={prev} prev_prio=120 prev_state={state} ==> "
            f"next_comm={COMM[nxt]} next_pid={nxt} next_prio=120")


def trip(t: float, preempted: bool, idle_b: bool, stall: bool,
         idle_ping: bool = False) -> list[tuple]:
    """ping -> A -> B -> A -> ping, all on CPU 0 unless B (or, at the end,
    ping) runs on the idle CPU 1; with a 150 us stall in B's user time
    when asked."""
    ev = [enter(t, PING, 44), wake(t + 5, PING, A), leave(t + 6, PING, 44, 64)]
    if preempted:
        ev += [switch(t + 7, PING, "R+", A)]
    else:
        ev += [enter(t + 7, PING, 47), switch(t + 8, PING, "S", A)]
    ev += [leave(t + 10, A, 232, 1), enter(t + 12, A, 0), leave(t + 14, A, 0, 84),
           enter(t + 20, A, 44), wake(t + 25, A, B), leave(t + 26, A, 44, 116),
           enter(t + 27, A, 232)]
    if idle_b:
        ev += [switch(t + 90, "0", "R", B, cpu="001")]
    else:
        ev += [switch(t + 28, A, "S", B)]
    gap = 150 if stall else 5
    ev += [leave(t + 100, B, 232, 1), enter(t + 100 + gap, B, 47),
           leave(t + 101 + gap, B, 47, 116), enter(t + 105 + gap, B, 44),
           wake(t + 110 + gap, B, A), leave(t + 111 + gap, B, 44, 116),
           enter(t + 112 + gap, B, 232), switch(t + 113 + gap, B, "S", A),
           leave(t + 120 + gap, A, 232, 1), enter(t + 121 + gap, A, 47),
           leave(t + 122 + gap, A, 47, 116), enter(t + 125 + gap, A, 1),
           wake(t + 130 + gap, A, PING), leave(t + 131 + gap, A, 1, 84),
           enter(t + 132 + gap, A, 232)]
    if idle_ping:
        ev += [switch(t + 133 + gap, "0", "R", PING, cpu="001")]
    else:
        ev += [switch(t + 133 + gap, A, "S", PING)]
    if preempted:
        # ping went back to its receive call only after A was done.
        ev += [enter(t + 134 + gap, PING, 47)]
    ev += [leave(t + 140 + gap, PING, 47, 84)]
    return ev


class RoundTrips(unittest.TestCase):
    def analyse(self, events: list[tuple]) -> dict:
        return roundtrips.analyse(events, TIDS, PACKET_CALLS)

    def test_a_round_trip_on_one_cpu_and_one_through_an_idle_cpu(self):
        events = trip(0, preempted=False, idle_b=False, stall=False)
        events += trip(100_000, preempted=True, idle_b=True, stall=True)
        found = self.analyse(events)
        self.assertEqual(dict(found["rtts"]), {(False, 0): [145.0], (True, 1): [290.0]})
        self.assertEqual(found["stalls"], [150.0])

    def test_ping_woken_on_an_idle_cpu_is_counted_apart(self):
        events = trip(0, preempted=False, idle_b=False, stall=False, idle_ping=True)
        events += trip(100_000, preempted=False, idle_b=True, stall=False)
        found = self.analyse(events)
        # Ping's own wake-up is not a tunnel's: both round trips are in
        # the class of their tunnel wake-ups only.
        self.assertEqual(dict(found["rtts"]), {(False, 0): [145.0], (False, 1): [145.0]})
        self.assertEqual(found["ping_idle"], 1)
        lines = roundtrips.report({"ztmesh": found}, 44, 24)
        self.assertIn("1 of 2", next(line for line in lines if "ping woken on an idle" in line))

    def test_threads_the_data_plane_wakes_now_and_then_do_not_count(self):
        events = []
        for i in range(8):
            events += trip(i * 100_000, preempted=False, idle_b=False, stall=False)
        # Once in eight round trips the data plane wakes another thread
        # of its daemon, which then stalls between two of its calls.
        events += [wake(800_000, A, OTHER), leave(800_001, OTHER, 232, 1),
                   enter(800_500, OTHER, 1)]
        self.assertEqual(self.analyse(events)["stalls"], [])
        self.assertEqual(roundtrips._carriers(events, TIDS), {A, B})

    def test_the_report_has_a_column_per_tunnel(self):
        found = self.analyse(trip(0, preempted=True, idle_b=True, stall=False))
        lines = roundtrips.report({"ztmesh": found, "boringtun-t1": found}, 44, 24)
        self.assertTrue(any("ztmesh" in line and "boringtun-t1" in line for line in lines))
        self.assertIn("1: 145/145", next(line for line in lines if "preempted, 1 tunnel idle" in line))


if __name__ == "__main__":
    unittest.main()
