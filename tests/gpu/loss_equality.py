"""Largest relative difference of each run's per-step losses from a reference run, from the
metrics.jsonl copies the GPU scripts keep as DIR/NAME.jsonl; with --topology, also the
`topology:` line of DIR/NAME.log for those runs.
Run: python3 tests/gpu/loss_equality.py DIR REFERENCE NAME... [--topology NAME...]  -> one JSON line."""
import json
import os
import sys


def losses(out, name):
    p = os.path.join(out, name + ".jsonl")
    if not os.path.exists(p):
        return None
    return [json.loads(l)["loss"] for l in open(p) if '"loss"' in l]


def topology(out, name):
    p = os.path.join(out, name + ".log")
    if not os.path.exists(p):
        return None
    return next((l.strip() for l in open(p) if l.startswith("topology:")), None)


def main(argv):
    out, ref_name, rest = argv[0], argv[1], argv[2:]
    names, topo = rest, []
    if "--topology" in rest:
        i = rest.index("--topology")
        names, topo = rest[:i], rest[i + 1:]
    ref = losses(out, ref_name)
    res = {"reference": ref_name, "losses": ref}
    for n in names:
        l = losses(out, n)
        res[n] = (None if not l or not ref or len(l) != len(ref)
                  else max(abs(a - b) / abs(b) for a, b in zip(l, ref)))
    for n in topo:
        res[n + "_topology"] = topology(out, n)
    print(json.dumps(res))


if __name__ == "__main__":
    main(sys.argv[1:])
