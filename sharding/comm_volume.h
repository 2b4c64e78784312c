#pragma once
// Bytes each rank sends per optimizer step, split into traffic inside a node and traffic between
// nodes, for a ZeRO stage and shard group: what `dstrain plan` reports (torch-free, pure).
//
// The model: every collective is a ring over its group. Over a group of g ranks and a buffer of
// B bytes, each rank sends (g - 1) / g * B for an all-gather or a reduce-scatter and
// 2 (g - 1) / g * B for an all-reduce. A ring over the whole world (ranks numbered node by node)
// crosses nodes on M of its N edges (M nodes of L ranks, N = M * L; none when M = 1), so on
// average 1 / L of a world collective's bytes leave the node; a ring over one node's ranks stays
// inside it; a ring over the replicas (one rank per node) is all inter-node. Per step, with k
// micro-batches, P the parameter bytes that stage 3 gathers, T the trainable parameter bytes (both
// in the compute dtype) and G the gradient bytes (zero.reduce_dtype):
//   stage 0: all-reduce G
//   stage 1: all-reduce G, all-gather T (the updated parameters)
//   stage 2: k reduce-scatters of G, all-gather T
//   stage 3: k * (2 all-gathers of P (forward and backward) + reduce-scatter of G)
// over the world (shard_group = "world"), or over the node (shard_group = "node") plus, across
// the replicas, an all-reduce of G (stages 0, 1) or of the gradient shard G / L once per step
// (stages 2, 3). Figures are averages over ranks; a node's link carries L times as much.
#include <cstdint>
#include <string>

#include "base/status.h"

namespace dstrain::sharding {

struct CommVolumeInput {
  int64_t stage = 0;
  std::string shard_group = "world";  // world | node
  int64_t world_size = 1;
  int64_t ranks_per_node = 1;         // world_size when everything runs on one node
  int64_t micro_batches = 1;          // per optimizer step, per rank
  int64_t gathered_param_bytes = 0;   // P: parameters sharded at stage 3, compute dtype
  int64_t trainable_param_bytes = 0;  // T: trainable parameters, compute dtype
  int64_t grad_bytes = 0;             // G: trainable parameters in zero.reduce_dtype
};

struct CommVolume {
  int64_t intra_node_bytes = 0;  // per rank per step
  int64_t inter_node_bytes = 0;
};

// InvalidArgument for a stage outside 0..3, an unknown shard group, or a world that the nodes
// do not divide evenly.
base::StatusOr<CommVolume> comm_volume_per_step(const CommVolumeInput& in);

}  // namespace dstrain::sharding
