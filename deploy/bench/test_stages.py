"""stages.py's turn tails on a hand-made trace. Run: python3 -m unittest
discover -s deploy/bench"""

from __future__ import annotations

import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stages  # noqa: E402

A, OTHER = "200", "400"
COMM = {A: "ztmesh-dataplan", OTHER: "ping", "0": "swapper/1"}


def call(t: float, nr: int, ret: int, took: float = 0.5) -> list[tuple]:
    return [(COMM[A], A, "000", t, "raw_syscalls:sys_enter", f"NR {nr} (3, 0, 0)"),
            (COMM[A], A, "000", t + took, "raw_syscalls:sys_exit", f"NR {nr} = {ret}")]


def switch(t: float, prev: str, state: str, nxt: str) -> tuple:
    return (COMM[prev], prev, "000", t, "sched:sched_switch",
            f"prev_comm={COMM[prev]} prev_pid={prev} prev_prio=120 prev_state={state} ==> "
            f"next_comm={COMM[nxt]} next_pid={nxt} next_prio=120")


class TurnTails(unittest.TestCase):
    def test_a_tail_runs_from_the_last_send_to_sleep_unless_preempted(self):
        events = [
            # Turn 1: TUN read, UDP send (returns at 10.5), an empty read,
            # the wait, asleep at 14: a tail of 3.5.
            *call(9, 0, 84), *call(10, 44, 116), *call(11, 0, -11), *call(12.5, 232, 0, 1),
            switch(14, A, "S", "0"),
            # Turn 2: preempted after its TUN write: not a tail.
            *call(20, 47, 116), *call(21, 1, 84), switch(22, A, "R", OTHER),
            switch(30, OTHER, "S", A), *call(31, 0, -11), switch(32, A, "S", "0"),
            # Turn 3: a send, a read that finds more, a second send (returns
            # at 40.5), asleep at 42.5: the tail starts at the second.
            *call(38, 1, 84), *call(39, 0, 84), *call(40, 44, 116), *call(41, 47, -11),
            switch(42.5, A, "S", "0"),
            # Turn 4: ends with a TUN write (returns at 51.5), asleep at 53.
            *call(50, 47, 116), *call(51, 1, 84), *call(52, 47, -11), switch(53, A, "S", "0"),
        ]
        tails = stages._analyse(events, {A})["tail"]
        self.assertEqual(dict(tails), {"UDP send": [3.5, 2.0], "TUN write": [1.5]})

    def test_the_report_has_the_tail_row(self):
        result = {"user": {}, "kernel": {}, "wake": {},
                  "tail": {"TUN write": [3.0, 5.0, 4.0]},
                  "trips": {"rtts": {}, "stalls": []}}
        report = stages._report({"ztmesh": result}, 10)
        self.assertIn("after a TUN write", report)
        self.assertIn("4.0 (3)", report)
        self.assertRegex(report, r"after a UDP send +-")


if __name__ == "__main__":
    unittest.main()
