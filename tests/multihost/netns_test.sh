#!/bin/bash
# Two "hosts" without a cluster: network namespaces on this machine, each with a veth pair to a
# bridge in the root namespace (10.213.0.0/24), and Open MPI over TCP between them; mpirun (in
# the root namespace) starts each host's orted inside its namespace through rsh_agent.sh. With
# 2 hosts x 2 ranks it checks that
#   - every rank's node index and local rank (dstrain's topology line) match the hostfile,
#   - the losses of stage 3 with zero.shard_group = world and = node equal a single rank's,
#   - the bytes each host sends (the root-side veth's rx counter) per step match the plan's
#     inter-node bytes (dstrain plan --json, comm.inter_node_bytes_per_step times the ranks per
#     node), and hybrid sharding sends clearly less.
# Per-step bytes are the difference of a long and a short run divided by the steps between them,
# so start-up, the launch itself and the end of the run cancel out.
# Usage: netns_test.sh DSTRAIN_BINARY MPIRUN PYTHON. Must run as root; fails (never skips) when
# namespaces cannot be made.
set -euo pipefail
BIN=$1
MPIRUN=$2
PY=$3
HERE=$(cd "$(dirname "$0")" && pwd)
TAG=$$
BR=dsmb${TAG}
NS=(dsmh${TAG}a dsmh${TAG}b)
VR=(dsma${TAG} dsmb${TAG}x)   # root-side ends
VN=(dsna${TAG} dsnb${TAG})    # namespace-side ends
ADDR=(10.213.0.2 10.213.0.3)
WORK=$(mktemp -d /tmp/dstrain-multihost.XXXXXX)
SHORT=2
LONG=6

cleanup() {
  set +e
  for n in "${NS[@]}"; do ip netns del "$n" 2>/dev/null; done
  for v in "${VR[@]}"; do ip link del "$v" 2>/dev/null; done
  ip link del "$BR" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() { echo "FAIL: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || fail "needs root for network namespaces"
if ip -o -4 addr show | grep -q " inet 10\.213\.0\."; then
  fail "10.213.0.0/24 is already in use on this machine (a stale run?): $(ip -o -4 addr show | grep ' 10\.213\.0\.')"
fi
ip link add "$BR" type bridge || fail "cannot create a bridge"
ip addr add 10.213.0.1/24 dev "$BR"
ip link set "$BR" up
for i in 0 1; do
  ip netns add "${NS[$i]}" || fail "cannot create network namespace ${NS[$i]}"
  ip link add "${VR[$i]}" type veth peer name "${VN[$i]}"
  ip link set "${VN[$i]}" netns "${NS[$i]}"
  ip link set "${VR[$i]}" master "$BR" up
  ip netns exec "${NS[$i]}" ip addr add "${ADDR[$i]}/24" dev "${VN[$i]}"
  ip netns exec "${NS[$i]}" ip link set "${VN[$i]}" up
  ip netns exec "${NS[$i]}" ip link set lo up
done
# No ping here: a refused TCP connection proves the other host answers.
probe=$(ip netns exec "${NS[0]}" timeout 5 bash -c "exec 3<>/dev/tcp/${ADDR[1]}/9" 2>&1 || true)
[[ "$probe" == *refused* ]] || fail "the namespaces cannot reach each other: $probe"

printf '%s slots=2\n%s slots=2\n' "${ADDR[0]}" "${ADDR[1]}" > "$WORK/hostfile"
# A copy that is surely executable, whatever the checkout kept of the file's mode.
install -m 755 "$HERE/rsh_agent.sh" "$WORK/rsh_agent.sh"
cat > "$WORK/base.toml" <<TOML
[run]
device = "cpu"
seed = 7
[model]
vocab_size = 259
hidden_size = 64
intermediate_size = 128
num_layers = 2
num_heads = 4
num_kv_heads = 2
tie_embeddings = true
[data]
path = ""
[train]
global_batch = 8
micro_batch = 2
seq_len = 32
dtype = "fp32"
[optim]
lr = 3e-3
warmup_steps = 0
schedule = "constant"  # the same rate whatever train.steps, so short runs resume into long ones
[zero]
stage = 3
[log]
every = 1000
[checkpoint]
enabled = false
TOML

MPI_COMMON=(--allow-run-as-root --bind-to none --mca mpi_yield_when_idle 1 -x OMP_NUM_THREADS=1)
# The plan models ring collectives (what NCCL runs); Open MPI picks recursive doubling for these
# sizes unless told otherwise. All-gather and all-reduce have a ring; reduce_scatter_block has
# none, and butterfly is the closest (it sends 1/2 rather than the ring's 3/4 of the buffer
# across 2 nodes of 2).
MPI_COLL=(--mca coll_tuned_use_dynamic_rules 1 --mca coll_tuned_allgather_algorithm 4
          --mca coll_tuned_allreduce_algorithm 4
          --mca coll_tuned_reduce_scatter_block_algorithm 4)
two_hosts() {  # two_hosts RUN_DIR ARGS...: 2 hosts x 2 ranks
  local dir=$1
  shift
  "$MPIRUN" "${MPI_COMMON[@]}" "${MPI_COLL[@]}" --hostfile "$WORK/hostfile" -np 4 --map-by slot \
    --mca plm_rsh_agent "$WORK/rsh_agent.sh" \
    --mca btl tcp,self,vader --mca btl_tcp_if_include 10.213.0.0/24 \
    --mca oob_tcp_if_include 10.213.0.0/24 \
    "$BIN" train --config "$WORK/base.toml" --set run.dir="$dir" "$@" > "$dir.log" 2>&1 ||
    { cat "$dir.log" >&2; fail "the two-host run $dir failed"; }
}
sent() {  # bytes host i has sent: what its veth delivered into the root namespace
  cat "/sys/class/net/${VR[$1]}/statistics/rx_bytes"
}

# The single-rank reference (root namespace, no network).
"$MPIRUN" "${MPI_COMMON[@]}" -np 1 "$BIN" train --config "$WORK/base.toml" \
  --set run.dir="$WORK/ref" --set train.steps=$LONG > "$WORK/ref.log" 2>&1 ||
  { cat "$WORK/ref.log" >&2; fail "the single-rank reference failed"; }

for group in world node; do
  for steps in $SHORT $LONG; do
    a0=$(sent 0); b0=$(sent 1)
    two_hosts "$WORK/$group-$steps" --set zero.shard_group=$group --set train.steps=$steps
    echo "$(( $(sent 0) - a0 )) $(( $(sent 1) - b0 ))" > "$WORK/$group-$steps.bytes"
  done
  "$BIN" plan --config "$WORK/base.toml" --world 4 --ranks-per-node 2 --json \
    --set zero.shard_group=$group > "$WORK/plan-$group.json" ||
    fail "dstrain plan --ranks-per-node failed for shard_group = $group"
done

# Checkpoints under hybrid sharding: the first node's ranks write the shards; the checkpoint
# resumes on the two hosts with the same config, and on one rank with shard_group = world.
two_hosts "$WORK/ck" --set zero.shard_group=node --set train.steps=$SHORT --set checkpoint.enabled=true
ckpt=$(ls -d "$WORK/ck/checkpoints"/step-* | tail -1)
"$MPIRUN" "${MPI_COMMON[@]}" -np 1 "$BIN" train --config "$WORK/base.toml" \
  --set run.dir="$WORK/ck-one" --set train.steps=$LONG --resume "$ckpt" > "$WORK/ck-one.log" 2>&1 ||
  { cat "$WORK/ck-one.log" >&2; fail "resuming $ckpt on one rank failed"; }
two_hosts "$WORK/ck" --set zero.shard_group=node --set train.steps=$LONG --set checkpoint.enabled=true \
  --resume auto

"$PY" - "$WORK" $SHORT $LONG <<'PYEOF'
import json, re, sys
work, short, long_ = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
failures = []

def losses(run):
    """{step: loss} from a run's metrics.jsonl (a resumed run appends to it)."""
    out = {}
    with open(f"{work}/{run}/metrics.jsonl") as f:
        for line in f:
            j = json.loads(line)
            if "loss" in j and "event" not in j:
                out[j["step"]] = j["loss"]
    return out

def same_as_reference(what, got, steps):
    if sorted(got) != list(steps):
        failures.append(f"{what}: steps {sorted(got)} logged, expected {list(steps)}")
    for s in steps:
        if s in got and abs(got[s] - ref[s]) > 1e-4 * abs(ref[s]):
            failures.append(f"{what}: step {s} loss {got[s]!r} != single-rank {ref[s]!r}")

def datasets(path):
    import h5py
    names = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names

# Saved once per shard: node 0's ranks (0, 1) write the state, node 1's replicas nothing.
ck_dir = f"{work}/ck/checkpoints/step-{short:08d}"
for r in range(4):
    n = len(datasets(f"{ck_dir}/rank-{r:05d}.h5"))
    if (n == 0) != (r >= 2):
        failures.append(f"checkpoint: rank {r} wrote {n} datasets (node 0 writes, node 1 none)")

ref = losses("ref")
assert sorted(ref) == list(range(1, long_ + 1)), f"reference steps {sorted(ref)}"
same_as_reference("hybrid checkpoint resumed on 2 hosts x 2", losses("ck"), range(1, long_ + 1))
same_as_reference("hybrid checkpoint resumed on 1 rank, shard_group = world", losses("ck-one"),
                  range(short + 1, long_ + 1))
per_host = {}
for group in ("world", "node"):
    # Node membership: hostfile order, 2 slots each, so ranks 0, 1 on node 0 and 2, 3 on node 1.
    if group == "node":
        log = open(f"{work}/node-{long_}.log").read()
        m = re.search(r"topology: (.*)", log)
        if not m:
            failures.append("no topology line in the shard_group = node run")
        else:
            for r in range(4):
                want = f"rank {r} node {r // 2} local {r % 2}"
                if want not in m.group(1):
                    failures.append(f"topology: expected '{want}' in '{m.group(1)}'")
            if not m.group(1).startswith("2 node(s) x 2 rank(s)"):
                failures.append(f"topology: {m.group(1)}")
    same_as_reference(f"shard_group = {group}", losses(f"{group}-{long_}"), range(1, long_ + 1))
    b_short = [int(x) for x in open(f"{work}/{group}-{short}.bytes").read().split()]
    b_long = [int(x) for x in open(f"{work}/{group}-{long_}.bytes").read().split()]
    per_step = [(l - s) / (long_ - short) for l, s in zip(b_long, b_short)]
    plan = json.load(open(f"{work}/plan-{group}.json"))
    if "comm" not in plan:
        failures.append(f"dstrain plan --json has no \"comm\" object: {sorted(plan)}")
        continue
    comm = plan["comm"]
    expected = comm["inter_node_bytes_per_step"] * comm["ranks_per_node"]
    per_host[group] = per_step
    for h, measured in enumerate(per_step):
        ratio = measured / expected if expected else float("inf")
        print(f"{group}: host {h} sent {measured:.0f} bytes/step between hosts; plan {expected} "
              f"(ratio {ratio:.3f})")
        # TCP/IP headers, acknowledgements and the trainer's few small reductions ride along
        # (about +5%); butterfly's reduce-scatter sends less than the ring (world: -11%).
        if not 0.85 <= ratio <= 1.15:
            failures.append(f"{group}: host {h} sent {measured:.0f} bytes/step, plan says {expected}")
if len(per_host) == 2:
    for h in range(2):
        if not per_host["node"][h] * 1.5 < per_host["world"][h]:
            failures.append(f"host {h}: hybrid sent {per_host['node'][h]:.0f} bytes/step, world "
                            f"{per_host['world'][h]:.0f}: not clearly less")
for f in failures:
    print("FAIL:", f)
sys.exit(1 if failures else 0)
PYEOF
echo "multihost: OK"
