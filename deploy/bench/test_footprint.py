"""footprint.py's code layout helpers on hand-made nm output and counts:
which functions go in the linker's list, in what order, and the check of
the committed list. Run: python3 -m unittest discover -s deploy/bench"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
import unittest
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
import footprint  # noqa: E402

NM = """\
0000000000001000 0000000000000400 t _ZN5small3hot17h0000000000000001E
0000000000001400 0000000000002000 T _ZN5large3hot17h0000000000000002E
0000000000003400 0000000000000100 t _ZN4cold2fn17h0000000000000003E
0000000000003500 0000000000000080 t ring_core_seal_avx2
0000000000004000 0000000000000010 r some_table
0000000000005000 D some_data
"""


class LayoutTests(unittest.TestCase):
    def setUp(self):
        self.symbols = footprint._parse_nm(NM)

    def test_only_code_symbols_with_a_size_are_kept(self):
        self.assertEqual([s[2] for s in self.symbols], [
            "_ZN5small3hot17h0000000000000001E", "_ZN5large3hot17h0000000000000002E",
            "_ZN4cold2fn17h0000000000000003E", "ring_core_seal_avx2"])

    def test_hot_functions_are_those_run_on_enough_round_trips_smallest_first(self):
        counts = {
            0x1010: 100, 0x1020: 100,  # small: every round trip
            0x2000: 40,                # large: 40 % of them
            0x3410: 10,                # cold: 10 %
            0x3510: 100,               # the asm function
            0x3600: 100,               # past the asm function's end: no symbol
            0x900: 100,                # before any symbol (another object)
        }
        hot = footprint._hot_functions({"rtts": 100, "counts": counts}, self.symbols, 0.3)
        self.assertEqual([s[2] for s in hot], [
            "ring_core_seal_avx2", "_ZN5small3hot17h0000000000000001E",
            "_ZN5large3hot17h0000000000000002E"])
        text = footprint._order_text(hot)
        lines = [line for line in text.splitlines() if not line.startswith("#")]
        self.assertEqual(lines, [s[2] for s in hot])

    def test_the_check_counts_the_listed_symbols_the_binary_still_has(self):
        with tempfile.TemporaryDirectory() as tmp:
            order = Path(tmp) / "hot-path.order"
            with mock.patch.object(footprint, "ORDER", order), \
                    mock.patch.object(footprint.pingtool, "REPO", Path(tmp)):
                order.write_text("# comment\n_ZN5small3hot17h0000000000000001E\n"
                                 "_ZN7renamed2fn17h00000000000000ffE\n\n")
                said, complete = footprint._layout_check(self.symbols, demangle=True)
                order.write_text("_ZN5small3hot17h0000000000000001E\nring_core_seal_avx2\n")
                all_there = footprint._layout_check(self.symbols)
        self.assertFalse(complete)
        self.assertIn("1 of the 2 functions", said)
        self.assertIn("--write-order", said)
        # The missing one is named, demangled when c++filt is there.
        self.assertRegex(said.splitlines()[-1], r"^  (renamed::fn|_ZN7renamed2fn17h0+ffE)")
        self.assertEqual(all_there, ("code layout: 2 of the 2 functions in hot-path.order "
                                     "are in this binary", True))

    def test_the_ci_check_exits_1_naming_what_is_missing_and_2_without_a_binary(self):
        with tempfile.TemporaryDirectory() as tmp:
            order = Path(tmp) / "hot-path.order"
            binary = Path(tmp) / "ztmesh"
            binary.write_bytes(b"")
            order.write_text("_ZN5small3hot17h0000000000000001E\n_ZN4gone2fn17h00000000000000aaE\n")
            out = io.StringIO()
            with mock.patch.object(footprint, "ORDER", order), \
                    mock.patch.object(footprint.pingtool, "REPO", Path(tmp)), \
                    mock.patch.object(footprint, "_symbols", return_value=self.symbols), \
                    mock.patch.object(footprint.platform, "machine", return_value="x86_64"), \
                    contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
                missing = footprint._check_order(str(binary))
                absent = footprint._check_order(str(Path(tmp) / "none"))
                order.write_text("_ZN5small3hot17h0000000000000001E\n")
                complete = footprint._check_order(str(binary))
        self.assertEqual((missing, absent, complete), (1, 2, 0))
        self.assertIn("gone", out.getvalue())

if __name__ == "__main__":
    unittest.main()
