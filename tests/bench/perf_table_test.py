"""tests/bench/perf_table.py on outputs shaped like a device call's: the ratios, the per-GPU
scaling, each goal met or not, several calls' outputs merged, the kernel table.
Run: python3 tests/bench/perf_table_test.py (ctest: perf_table)."""
import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import perf_table  # noqa: E402


def write(out, name, rows):
    with open(os.path.join(out, name), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def dstrain(world, tps, mfu, ac="none"):
    return {"peer": "dstrain", "world": world, "ac": ac, "tokens_per_s_per_gpu": tps, "mfu": mfu,
            "comm_exposed_share": 0.01, "peak_mem_gib": 20.0, "driver_calls_measured": 0}


def peer(name, world, tps, ac="none"):
    row = {"peer": name, "world": world, "ac": ac, "tokens_per_s_per_gpu": tps, "peak_mem_gib": 19.0}
    if name.endswith("compile"):
        row["dynamo_unique_graphs"] = 1
    return row


class PerfTableTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.a = os.path.join(self.tmp.name, "a")
        self.b = os.path.join(self.tmp.name, "b")
        os.makedirs(self.a)
        os.makedirs(self.b)
        with open(os.path.join(self.a, "gpus.csv"), "w") as f:
            f.write("name, memory.total [MiB]\nNVIDIA H200, 143771 MiB\nNVIDIA H200, 143771 MiB\n")
        # Call a: the 8B shape; call b: the 1B shape and the kernels.
        write(self.a, "bench8b.jsonl", [dstrain(2, 9000, 0.497), peer("fsdp2", 2, 7500),
                                        peer("fsdp2+compile", 2, 9100)])
        write(self.b, "bench.jsonl", [dstrain(1, 50000, 0.45), peer("fsdp2", 1, 40000),
                                      peer("fsdp2+compile", 1, 45000), dstrain(2, 48000, 0.43),
                                      peer("fsdp2", 2, 30000)])
        write(self.b, "kbench.jsonl", [{"kernel": "swiglu", "dstrain_ms": 0.23, "aten_ms": 1.3,
                                        "speedup": 5.65, "dstrain_gb_per_s": 4081},
                                       {"bench": "kernels", "swiglu_speedup": 5.65}])

    def tearDown(self):
        self.tmp.cleanup()

    def test_ratios_goals_and_scaling_from_two_calls(self):
        text = perf_table.report([self.a, self.b], "2026-11-24")
        self.assertIn("Hardware: 2 x NVIDIA H200, 2026-11-24", text)
        # 8B: 9000 / 7500 = 1.20x eager (met); 9000 / 9100 = 0.99x compiled (not met).
        self.assertIn("8B on 2 GPU(s), activation ckpt none: 1.20x fsdp2 (goal >= 1.15x): met", text)
        self.assertIn("0.99x fsdp2+compile (goal >= 1.0x): NOT met", text)
        self.assertIn("MFU at 8B on 2 GPUs: 49.7% (goal >= 50%): NOT met", text)
        # 1B: 50000 / 40000 = 1.25x on one GPU; 48000 / 50000 = 0.96x per GPU from one to two.
        self.assertIn("1B on 1 GPU(s), activation ckpt none: 1.25x fsdp2 (goal >= 1.15x): met", text)
        self.assertIn("per-GPU throughput of 1B on 2 GPUs against 1: 0.96x (goal >= 0.95x): met", text)
        self.assertIn("dstrain 0.96x, fsdp2 0.75x", text)
        # A peer that did not run is named so, not left blank.
        self.assertIn("| 1B | 2 | none | 48,000 |", text)
        self.assertIn("not run", text)

    def test_kernel_table(self):
        lines = perf_table.kernel_table([self.b])
        self.assertEqual(lines[2], "| swiglu | 0.230 | 1.300 | 5.65x | 4,081 |")
        self.assertEqual(len(lines), 3, "the summary line is not a kernel")

    def test_missing_outputs_give_an_empty_report(self):
        text = perf_table.report([os.path.join(self.tmp.name, "none")], "d")
        self.assertNotIn("goals", text)
        self.assertIn("Hardware: ?", text)


if __name__ == "__main__":
    unittest.main()
