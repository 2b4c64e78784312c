// The ring model of per-step traffic (sharding/comm_volume.h), checked against figures worked
// out by hand, and the properties `dstrain plan` relies on.
#include "sharding/comm_volume.h"

#include <gtest/gtest.h>

namespace dstrain::sharding {
namespace {

CommVolumeInput input(int64_t stage, const std::string& group, int64_t world, int64_t per_node) {
  CommVolumeInput in;
  in.stage = stage;
  in.shard_group = group;
  in.world_size = world;
  in.ranks_per_node = per_node;
  in.gathered_param_bytes = 1000;
  in.trainable_param_bytes = 1000;
  in.grad_bytes = 1000;
  return in;
}

CommVolume volume(const CommVolumeInput& in) {
  auto v = comm_volume_per_step(in);
  EXPECT_TRUE(v.ok()) << v.status().to_string();
  return v.ok() ? *v : CommVolume{-1, -1};
}

TEST(CommVolume, StageThreeTwoNodesOfTwoByHand) {
  // World ring of 4: each rank sends 3/4 of (2 gathers of P + 1 reduce-scatter of G) = 2250;
  // 2 of the ring's 4 edges cross nodes, so half of it leaves the node.
  CommVolume world = volume(input(3, "world", 4, 2));
  EXPECT_EQ(world.intra_node_bytes, 1125);
  EXPECT_EQ(world.inter_node_bytes, 1125);
  // Node ring of 2: 1/2 of 3000 inside; across the 2 replicas an all-reduce of the 500-byte
  // gradient shard: 2 * 1/2 * 500.
  CommVolume node = volume(input(3, "node", 4, 2));
  EXPECT_EQ(node.intra_node_bytes, 1500);
  EXPECT_EQ(node.inter_node_bytes, 500);
}

TEST(CommVolume, StageZeroHybridIsHierarchicalAllReduce) {
  // 4 nodes of 8: all-reduce within the node (2 * 7/8 G) and across the replicas (2 * 3/4 G).
  CommVolume v = volume(input(0, "node", 32, 8));
  EXPECT_EQ(v.intra_node_bytes, 1750);
  EXPECT_EQ(v.inter_node_bytes, 1500);
  // Stage 1 adds the all-gather of the updated parameters, inside the node only.
  CommVolume s1 = volume(input(1, "node", 32, 8));
  EXPECT_EQ(s1.intra_node_bytes, 1750 + 875);
  EXPECT_EQ(s1.inter_node_bytes, 1500);
}

TEST(CommVolume, OneNodeSendsNothingBetweenNodes) {
  for (int64_t stage = 0; stage <= 3; ++stage) {
    CommVolume world = volume(input(stage, "world", 8, 8));
    CommVolume node = volume(input(stage, "node", 8, 8));
    EXPECT_EQ(world.inter_node_bytes, 0) << "stage " << stage;
    EXPECT_EQ(node.inter_node_bytes, 0) << "stage " << stage;
    EXPECT_EQ(world.intra_node_bytes, node.intra_node_bytes) << "stage " << stage;
    EXPECT_GT(world.intra_node_bytes, 0) << "stage " << stage;
  }
}

TEST(CommVolume, HybridSendsLessBetweenNodesAtStagesTwoAndThree) {
  for (int64_t stage : {2, 3}) {
    for (int64_t per_node : {2, 4, 8}) {
      CommVolume world = volume(input(stage, "world", 4 * per_node, per_node));
      CommVolume node = volume(input(stage, "node", 4 * per_node, per_node));
      EXPECT_LT(node.inter_node_bytes, world.inter_node_bytes)
          << "stage " << stage << ", " << per_node << " per node";
    }
  }
}

TEST(CommVolume, MicroBatchesRepeatShardGroupTrafficOnly) {
  CommVolumeInput one = input(3, "node", 4, 2);
  CommVolumeInput four = one;
  four.micro_batches = 4;
  // Gathers and reduce-scatters happen per micro-batch; the replicas' all-reduce once per step.
  EXPECT_EQ(volume(four).intra_node_bytes, 4 * volume(one).intra_node_bytes);
  EXPECT_EQ(volume(four).inter_node_bytes, volume(one).inter_node_bytes);
  one.shard_group = four.shard_group = "world";
  EXPECT_EQ(volume(four).inter_node_bytes, 4 * volume(one).inter_node_bytes);
}

TEST(CommVolume, RejectsBadInput) {
  EXPECT_FALSE(comm_volume_per_step(input(3, "world", 6, 4)).ok());  // 4 does not divide 6
  EXPECT_FALSE(comm_volume_per_step(input(3, "rack", 4, 2)).ok());
  EXPECT_FALSE(comm_volume_per_step(input(4, "world", 4, 2)).ok());
  EXPECT_FALSE(comm_volume_per_step(input(3, "world", 4, 0)).ok());
  CommVolumeInput zero_micro = input(3, "world", 4, 2);
  zero_micro.micro_batches = 0;
  EXPECT_FALSE(comm_volume_per_step(zero_micro).ok());
}

}  // namespace
}  // namespace dstrain::sharding
