// Topology over 4 ranks with the nodes faked by splitting the world (the real split,
// MPI_COMM_TYPE_SHARED, is exercised by tests/multihost): places, node numbering, the two groups,
// and the error for nodes of different sizes.
#include "launch/topology.h"

#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdlib>

namespace dstrain::launch {
namespace {

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world_size() {
  int s = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

// Ranks {0, 2} and {1, 3}: nodes that do not hold consecutive ranks, numbered by their lowest.
TEST(Topology, InterleavedNodes) {
  ASSERT_EQ(world_size(), 4);
  MPI_Comm node;
  MPI_Comm_split(MPI_COMM_WORLD, world_rank() % 2, world_rank(), &node);
  auto t = Topology::create_from_node_comm(MPI_COMM_WORLD, node);
  MPI_Comm_free(&node);
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  const Topology& topo = **t;
  EXPECT_EQ(topo.num_nodes(), 2);
  EXPECT_EQ(topo.ranks_per_node(), 2);
  EXPECT_EQ(topo.node(), world_rank() % 2);
  EXPECT_EQ(topo.local_rank(), world_rank() / 2);
  ASSERT_EQ(topo.places().size(), 4u);
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(topo.places()[r].node, r % 2) << "rank " << r;
    EXPECT_EQ(topo.places()[r].local_rank, r / 2) << "rank " << r;
  }
  // The node's group holds my node's ranks in local-rank order; the replicas' group one rank
  // per node in node order.
  int intra_rank = -1, intra_size = 0, inter_rank = -1, inter_size = 0;
  MPI_Comm_rank(topo.intra_node(), &intra_rank);
  MPI_Comm_size(topo.intra_node(), &intra_size);
  MPI_Comm_rank(topo.inter_node(), &inter_rank);
  MPI_Comm_size(topo.inter_node(), &inter_size);
  EXPECT_EQ(intra_size, 2);
  EXPECT_EQ(intra_rank, topo.local_rank());
  EXPECT_EQ(inter_size, 2);
  EXPECT_EQ(inter_rank, topo.node());
  // Summing world ranks over each group shows who is in it.
  int mine = world_rank(), sum = 0;
  MPI_Allreduce(&mine, &sum, 1, MPI_INT, MPI_SUM, topo.intra_node());
  EXPECT_EQ(sum, world_rank() % 2 == 0 ? 0 + 2 : 1 + 3);
  MPI_Allreduce(&mine, &sum, 1, MPI_INT, MPI_SUM, topo.inter_node());
  EXPECT_EQ(sum, world_rank() < 2 ? 0 + 1 : 2 + 3);
  EXPECT_EQ(topo.describe(),
            "2 node(s) x 2 rank(s): rank 0 node 0 local 0, rank 1 node 1 local 0, "
            "rank 2 node 0 local 1, rank 3 node 1 local 1");
}

TEST(Topology, UnequalNodesAreAnErrorOnEveryRank) {
  ASSERT_EQ(world_size(), 4);
  MPI_Comm node;
  MPI_Comm_split(MPI_COMM_WORLD, world_rank() == 3 ? 1 : 0, world_rank(), &node);  // 3 + 1
  auto t = Topology::create_from_node_comm(MPI_COMM_WORLD, node);
  MPI_Comm_free(&node);
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().to_string().find("same number of ranks on every node"), std::string::npos)
      << t.status().to_string();
}

// On one machine the real split finds one node holding every rank.
TEST(Topology, OneMachineIsOneNode) {
  auto t = Topology::create(MPI_COMM_WORLD);
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_EQ((*t)->num_nodes(), 1);
  EXPECT_EQ((*t)->ranks_per_node(), world_size());
  EXPECT_EQ((*t)->local_rank(), world_rank());
}

// DSTRAIN_TEST_RANKS_PER_NODE=2: consecutive pairs of ranks pretend to be nodes (how the GPU
// checks run hybrid sharding on one machine); a value that is no positive number is an error.
TEST(Topology, PretendNodesOfConsecutiveRanks) {
  ASSERT_EQ(world_size(), 4);
  ASSERT_EQ(setenv("DSTRAIN_TEST_RANKS_PER_NODE", "2", 1), 0);
  auto t = Topology::create(MPI_COMM_WORLD);
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_EQ((*t)->num_nodes(), 2);
  EXPECT_EQ((*t)->ranks_per_node(), 2);
  EXPECT_EQ((*t)->node(), world_rank() / 2);
  EXPECT_EQ((*t)->local_rank(), world_rank() % 2);
  ASSERT_EQ(setenv("DSTRAIN_TEST_RANKS_PER_NODE", "0", 1), 0);
  auto bad = Topology::create(MPI_COMM_WORLD);
  EXPECT_FALSE(bad.ok());
  EXPECT_NE(bad.status().to_string().find("DSTRAIN_TEST_RANKS_PER_NODE=0"), std::string::npos)
      << bad.status().to_string();
  unsetenv("DSTRAIN_TEST_RANKS_PER_NODE");
}

}  // namespace
}  // namespace dstrain::launch
