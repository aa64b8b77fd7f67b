"""pings.py on ping's own summaries. Run: python3 -m unittest discover -s deploy/bench"""

from __future__ import annotations

import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pings  # noqa: E402


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
                             "ping_loss_pct": 50.0, "pings": 30, "ping_batches": 3})

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


if __name__ == "__main__":
    unittest.main()
