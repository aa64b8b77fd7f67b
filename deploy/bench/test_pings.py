"""pings.py on ping's own summaries. Run: python3 -m unittest discover -s deploy/bench"""

from __future__ import annotations

import random
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pings  # noqa: E402
import report  # noqa: E402


def summary(sent: int, received: int, rtt: str | None) -> str:
    lost = 100 * (sent - received) // sent
    text = (f"--- 10.99.0.2 ping statistics ---\n{sent} packets transmitted, {received} received, "
            f"{lost}% packet loss, time 905ms\n")
    return text + (f"rtt min/avg/max/mdev = {rtt} ms\n" if rtt else "")


def replies(*times: float) -> str:
    return "".join(f"64 bytes from 10.99.0.2: icmp_seq={i + 1} ttl=64 time={t} ms\n"
                   for i, t in enumerate(times))


class Turns(unittest.TestCase):
    def test_each_batch_starts_one_further_on_and_every_tunnel_leads_once_a_cycle(self):
        names = ["veth", "ztmesh", "boringtun-t1"]
        self.assertEqual(pings.turns(names, 0), ["veth", "ztmesh", "boringtun-t1"])
        self.assertEqual(pings.turns(names, 1), ["ztmesh", "boringtun-t1", "veth"])
        self.assertEqual(pings.turns(names, 2), ["boringtun-t1", "veth", "ztmesh"])
        self.assertEqual(pings.turns(names, 3), pings.turns(names, 0))
        self.assertEqual(pings.turns([], 4), [])


class Parse(unittest.TestCase):
    def test_reads_counts_and_times(self):
        self.assertEqual(pings.parse(summary(10, 9, "0.150/0.212/0.410/0.050")),
                         {"sent": 10, "received": 9, "min": 0.15, "mean": 0.212, "max": 0.41})

    def test_reads_each_replys_time_when_ping_printed_it(self):
        out = replies(0.213, 1.25, 0.2) + summary(4, 3, "0.200/0.554/1.250/0.490")
        self.assertEqual(pings.parse(out)["times"], [0.213, 1.25, 0.2])

    def test_all_lost_has_counts_and_no_times(self):
        self.assertEqual(pings.parse(summary(10, 0, None)), {"sent": 10, "received": 0})

    def test_output_without_counts_is_an_error_that_quotes_it(self):
        with self.assertRaisesRegex(ValueError, "no 'packets transmitted' line.*Name or service"):
            pings.parse("ping: 10.99.0.2: Name or service not known\n")

    def test_replies_without_times_is_an_error(self):
        with self.assertRaisesRegex(ValueError, "3 replies but no rtt line"):
            pings.parse(summary(10, 3, None))


class Pool(unittest.TestCase):
    def test_mean_is_over_replies_not_over_batches(self):
        r = pings.pool([pings.parse(summary(10, 10, "0.100/0.200/0.300/0.01")),
                        pings.parse(summary(10, 5, "0.050/0.500/0.900/0.01")),
                        pings.parse(summary(10, 0, None))])
        # (10 * 0.2 + 5 * 0.5) / 15 = 0.3, where the mean of the two means is 0.35.
        self.assertEqual(r, {"rtt_ms": 0.3, "rtt_min_ms": 0.05, "rtt_max_ms": 0.9,
                             "ping_loss_pct": 50.0, "pings": 30, "ping_batches": 3,
                             "ping_batch_means": [[0.2, 10], [0.5, 5], [None, 0]]})

    def test_median_and_slow_replies_when_every_batch_has_its_times(self):
        r = pings.pool([pings.parse(replies(0.2, 0.3, 3.1) + summary(3, 3, "0.2/1.2/3.1/1")),
                        pings.parse(replies(0.25) + summary(2, 1, "0.25/0.25/0.25/0"))])
        self.assertEqual((r["rtt_median_ms"], r["ping_slow"], r["ping_loss_pct"]), (0.275, 1, 20.0))

    def test_no_median_when_the_times_do_not_match_the_replies(self):
        # A duplicate reply (DUP!) adds a time that is not a reply counted.
        r = pings.pool([pings.parse(replies(0.2, 0.2) + summary(1, 1, "0.2/0.2/0.2/0"))])
        self.assertNotIn("rtt_median_ms", r)
        self.assertNotIn("ping_slow", r)

    def test_no_reply_at_all_is_an_error(self):
        r = pings.pool([pings.parse(summary(10, 0, None))] * 2)
        self.assertEqual(r, {"error": "ping: no reply to any of 20 requests in 2 batches"})


class MeanRatio(unittest.TestCase):
    def test_a_tunnel_level_in_every_turn_is_one_whatever_is_drawn(self):
        pairs = [(m, 10, m, 10) for m in (0.2, 0.25, 0.4, 1.3)]
        self.assertEqual(pings.mean_ratio(pairs),
                         {"ratio": 1.0, "low": 1.0, "high": 1.0, "pairs": 4})

    def test_the_ratio_is_of_means_over_replies(self):
        # A: (9 * 1.0 + 1 * 2.0) / 10 = 1.1; B: 1.0.
        r = pings.mean_ratio([(1.0, 9, 1.0, 10), (2.0, 1, 1.0, 10)])
        self.assertAlmostEqual(r["ratio"], 1.1)

    def test_the_interval_holds_the_ratio_and_narrows_with_more_turns(self):
        rng = random.Random(7)

        def turns(n: int) -> list[tuple[float, int, float, int]]:
            out = []
            for _ in range(n):
                pace = rng.uniform(0.2, 0.4)  # the machine's pace, shared by the pair
                out.append((pace * 0.9 * rng.uniform(0.8, 1.2), 10,
                            pace * rng.uniform(0.8, 1.2), 10))
            return out

        few, many = pings.mean_ratio(turns(30)), pings.mean_ratio(turns(600))
        for r in (few, many):
            self.assertLess(r["low"], r["ratio"])
            self.assertLess(r["ratio"], r["high"])
        self.assertLess(many["low"], 0.9)
        self.assertGreater(many["high"], 0.9)
        self.assertLess(many["high"] - many["low"], (few["high"] - few["low"]) / 2)
        self.assertLess(many["high"], 1.0)

    def test_the_same_pairs_give_the_same_interval(self):
        pairs = [(0.2, 10, 0.3, 10), (0.4, 10, 0.3, 10), (0.25, 10, 0.2, 10)]
        self.assertEqual(pings.mean_ratio(pairs), pings.mean_ratio(pairs))

    def test_turns_without_a_reply_are_left_out(self):
        r = pings.mean_ratio([(0.2, 10, 0.4, 10), (None, 0, 0.3, 10), (0.3, 10, None, 0)])
        self.assertEqual(r, {"ratio": 0.5, "low": 0.5, "high": 0.5, "pairs": 1})
        self.assertIsNone(pings.mean_ratio([(None, 0, 0.3, 10)]))
        self.assertIsNone(pings.mean_ratio([]))


class PingRatios(unittest.TestCase):
    @staticmethod
    def ping(impl: str, rnd: int, means: list[float]) -> dict:
        return {"impl": impl, "round": rnd, "test": "ping",
                "ping_batch_means": [[m, 10] for m in means]}

    def test_pairs_batches_of_the_same_turn_across_rounds_and_runs(self):
        run1 = [self.ping("ztmesh", 1, [0.2, 0.2]), self.ping("boringtun-t1", 1, [0.4, 0.4]),
                self.ping("ztmesh", 2, [0.3]), {"impl": "boringtun-t1", "round": 2,
                                                 "test": "ping", "error": "no reply"}]
        run2 = [self.ping("ztmesh", 1, [0.1]), self.ping("boringtun-t1", 1, [0.2])]
        self.assertEqual(report._batch_pairs([run1, run2], "ztmesh", "boringtun-t1"),
                         [(0.2, 10, 0.4, 10), (0.2, 10, 0.4, 10), (0.1, 10, 0.2, 10)])
        lines = report.ping_ratios([run1, run2], ["ztmesh", "boringtun-t1", "veth"])
        self.assertEqual(len(lines), 4)
        self.assertEqual(lines[3].split(), ["boringtun-t1", "3", "0.500", "0.500", "0.500"])

    def test_nothing_without_batch_means(self):
        old = [{"impl": "ztmesh", "round": 1, "test": "ping", "rtt_ms": 0.2},
               {"impl": "boringtun-t1", "round": 1, "test": "ping", "rtt_ms": 0.3}]
        self.assertEqual(report.ping_ratios([old], ["ztmesh", "boringtun-t1"]), [])


if __name__ == "__main__":
    unittest.main()
