"""The iperf3 arguments each tunnel gets: UDP datagrams as large as its
path MTU allows, so that no tunnel's UDP test measures IP fragmentation
or stops at an EMSGSIZE."""

import unittest

import bench


class IperfArgs(unittest.TestCase):
    def test_direct_tunnels_send_datagrams_that_fit_the_overlay_mtu(self):
        for impl in ("ztmesh", "boringtun", "veth"):
            args = bench.iperf_args("udp-rev", impl)
            self.assertEqual(args[args.index("-l") + 1], "1380", impl)
        self.assertLessEqual(1380 + 8 + 20, 1420)

    def test_the_relayed_tunnel_sends_datagrams_that_fill_the_relay_path(self):
        self.assertEqual(bench.iperf_args("udp", "ztmesh-relay"),
                         ["-u", "-b", "0", "-l", "1344"])
        self.assertEqual(bench.iperf_args("udp-rev", "ztmesh-relay"),
                         ["-u", "-b", "0", "-l", "1344", "-R"])
        self.assertEqual(1344 + 8 + 20, 1372)

    def test_tcp_tests_are_the_same_for_every_tunnel(self):
        for test in ("tcp1", "tcp1-rev", "tcp4", "tcp4-rev"):
            self.assertEqual(bench.iperf_args(test, "ztmesh-relay"), bench.TESTS[test])


if __name__ == "__main__":
    unittest.main()
