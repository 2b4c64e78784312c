#pragma once
// Where the ranks are: which node each belongs to, and the two sub-groups hybrid sharding
// (zero.shard_group = "node") runs its collectives over: the ranks of this node, and the ranks
// with this local rank on every node (the replicas of this rank's shard).
#include <mpi.h>

#include <memory>
#include <string>
#include <vector>

#include "base/status.h"

namespace dstrain::launch {

// One rank's place: its node (numbered in the order of the nodes' lowest world ranks) and its
// rank within the node.
struct RankPlace {
  int node = 0;
  int local_rank = 0;
};

class Topology {
 public:
  // Collective over `world`. Node membership from MPI_Comm_split_type(MPI_COMM_TYPE_SHARED);
  // fails when the nodes hold different numbers of ranks (a shard group must be the same size
  // everywhere). For tests only, DSTRAIN_TEST_RANKS_PER_NODE=N makes world ranks
  // [kN, (k+1)N) node k instead (several "nodes" on one machine, e.g. on one GPU machine).
  static base::StatusOr<std::unique_ptr<Topology>> create(MPI_Comm world);
  // As create(), with `node` (a split of `world`, not taken over) standing for the node: how
  // tests pretend that one machine is several.
  static base::StatusOr<std::unique_ptr<Topology>> create_from_node_comm(MPI_Comm world,
                                                                         MPI_Comm node);
  ~Topology();
  Topology(const Topology&) = delete;
  Topology& operator=(const Topology&) = delete;

  int node() const { return places_[rank_].node; }
  int num_nodes() const { return num_nodes_; }
  int local_rank() const { return places_[rank_].local_rank; }
  int ranks_per_node() const { return ranks_per_node_; }
  // Every world rank's place, indexed by world rank.
  const std::vector<RankPlace>& places() const { return places_; }
  // The ranks of this node, ranked by local rank.
  MPI_Comm intra_node() const { return intra_; }
  // The ranks with this rank's local rank, one per node, ranked by node.
  MPI_Comm inter_node() const { return inter_; }
  // "2 node(s) x 2 rank(s): rank 0 node 0 local 0, rank 1 ...", for the start-of-run log.
  std::string describe() const;

 private:
  Topology() = default;
  int rank_ = 0;
  int num_nodes_ = 1;
  int ranks_per_node_ = 1;
  std::vector<RankPlace> places_;
  MPI_Comm intra_ = MPI_COMM_NULL;
  MPI_Comm inter_ = MPI_COMM_NULL;
};

}  // namespace dstrain::launch
