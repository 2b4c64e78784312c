"""Reads <run_dir>/tb with TensorBoard's own EventAccumulator and compares it with metrics.jsonl:
every numeric field but `step` of a line that has a step must be a scalar with that tag, step and
value (as a float32), and nothing else may be there. A "resume" event line at step S replaces what
the lines before it said about steps after S (a resumed run logs them again), as TensorBoard's
restart record must make the reader do: each step once, with the resumed run's values. Exit 0: equal; 1: a difference (printed);
77: tensorboard is not installed (the C++ test skips)."""
import glob
import json
import math
import os
import re
import socket
import struct
import sys

try:
    from tensorboard.backend.event_processing import event_accumulator
except ImportError as e:
    print(f"tensorboard is not installed ({e}); run launch/setup_env.sh")
    sys.exit(77)


def as_float32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


# metrics.jsonl keys whose TensorBoard tag differs (runtime/metrics.cc tensorboard_tag).
TAGS = {"eval_loss": "eval/loss", "eval_ppl": "eval/perplexity"}


def expected_scalars(metrics_path):
    want = {}
    with open(metrics_path) as f:
        for text in f:
            line = json.loads(text)
            if not isinstance(line.get("step"), int):
                continue
            if line.get("event") == "resume":
                for tag in want:
                    want[tag] = [(s, v) for s, v in want[tag] if s <= line["step"]]
            for key, value in line.items():
                if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                want.setdefault(TAGS.get(key, key), []).append((line["step"], as_float32(float(value))))
    return want


def main():
    run_dir = sys.argv[1]
    tb_dir = os.path.join(run_dir, "tb")
    problems = []
    name = re.compile(r"events\.out\.tfevents\.\d+\." + re.escape(socket.gethostname()) + "$")
    files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(tb_dir, "*")))
    if not files or not all(name.match(f) for f in files):
        problems.append(f"event file names {files}")

    acc = event_accumulator.EventAccumulator(tb_dir, size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    want = expected_scalars(os.path.join(run_dir, "metrics.jsonl"))
    got_tags = sorted(acc.Tags()["scalars"])
    if got_tags != sorted(want):
        problems.append(f"tags {got_tags} != {sorted(want)}")
    for tag in sorted(set(got_tags) & set(want)):
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        if len(got) != len(want[tag]):
            problems.append(f"{tag}: {got} != {want[tag]}")
            continue
        for (gs, gv), (ws, wv) in zip(got, want[tag]):
            if gs != ws or not math.isclose(gv, wv, rel_tol=1e-7, abs_tol=0.0):
                problems.append(f"{tag}: got step {gs} value {gv!r}, want step {ws} value {wv!r}")
    if problems:
        print("\n".join(problems))
        sys.exit(1)
    print(f"{len(got_tags)} tags read back from {files}")


if __name__ == "__main__":
    main()
