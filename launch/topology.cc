#include "launch/topology.h"

#include <algorithm>
#include <cstdlib>
#include <string>

#include "sharding/mpi_communicator.h"

namespace dstrain::launch {

base::StatusOr<std::unique_ptr<Topology>> Topology::create(MPI_Comm world) {
  int rank = 0;
  RETURN_IF_ERROR(MPI_CHECK(MPI_Comm_rank(world, &rank)));
  MPI_Comm node = MPI_COMM_NULL;
  const char* pretend = std::getenv("DSTRAIN_TEST_RANKS_PER_NODE");
  const int per_node = pretend != nullptr ? std::atoi(pretend) : 0;
  if (pretend != nullptr && per_node < 1) {
    return base::Status::InvalidArgument(std::string("DSTRAIN_TEST_RANKS_PER_NODE=") + pretend +
                                         ": not a positive number of ranks");
  }
  if (per_node > 0) {
    RETURN_IF_ERROR(MPI_CHECK(MPI_Comm_split(world, rank / per_node, rank, &node)));
  } else {
    RETURN_IF_ERROR(
        MPI_CHECK(MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node)));
  }
  base::StatusOr<std::unique_ptr<Topology>> t = create_from_node_comm(world, node);
  MPI_Comm_free(&node);
  return t;
}

base::StatusOr<std::unique_ptr<Topology>> Topology::create_from_node_comm(MPI_Comm world,
                                                                          MPI_Comm node) {
  std::unique_ptr<Topology> t(new Topology());
  int size = 1;
  RETURN_IF_ERROR(MPI_CHECK(MPI_Comm_rank(world, &t->rank_)));
  RETURN_IF_ERROR(MPI_CHECK(MPI_Comm_size(world, &size)));
  RETURN_IF_ERROR(MPI_CHECK(MPI_Comm_split(node, 0, t->rank_, &t->intra_)));
  int local_rank = 0, local_size = 1;
  RETURN_IF_ERROR(MPI_CHECK(MPI_Comm_rank(t->intra_, &local_rank)));
  RETURN_IF_ERROR(MPI_CHECK(MPI_Comm_size(t->intra_, &local_size)));
  // A node is named by its lowest world rank (local rank 0, as the split is keyed by world rank);
  // numbering those names in order gives node indices that every rank agrees on.
  int leader = t->rank_;
  RETURN_IF_ERROR(MPI_CHECK(MPI_Bcast(&leader, 1, MPI_INT, 0, t->intra_)));
  std::vector<int> mine = {leader, local_rank, local_size};
  std::vector<int> all(3 * static_cast<size_t>(size));
  RETURN_IF_ERROR(MPI_CHECK(MPI_Allgather(mine.data(), 3, MPI_INT, all.data(), 3, MPI_INT, world)));
  std::vector<int> leaders;
  for (int r = 0; r < size; ++r) leaders.push_back(all[3 * r]);
  std::sort(leaders.begin(), leaders.end());
  leaders.erase(std::unique(leaders.begin(), leaders.end()), leaders.end());
  t->num_nodes_ = static_cast<int>(leaders.size());
  t->ranks_per_node_ = local_size;
  for (int r = 0; r < size; ++r) {
    const int index = static_cast<int>(
        std::lower_bound(leaders.begin(), leaders.end(), all[3 * r]) - leaders.begin());
    t->places_.push_back({index, all[3 * r + 1]});
    if (all[3 * r + 2] != local_size) {
      return base::Status::InvalidArgument(
          "nodes hold different numbers of ranks: world rank " + std::to_string(r) +
          " is on a node of " + std::to_string(all[3 * r + 2]) + " rank(s), world rank " +
          std::to_string(t->rank_) + " on one of " + std::to_string(local_size) +
          "; hybrid sharding needs the same number of ranks on every node (check the hostfile's "
          "slots or --ntasks-per-node)");
    }
  }
  RETURN_IF_ERROR(MPI_CHECK(MPI_Comm_split(world, local_rank, t->node(), &t->inter_)));
  return t;
}

Topology::~Topology() {
  if (inter_ != MPI_COMM_NULL) MPI_Comm_free(&inter_);
  if (intra_ != MPI_COMM_NULL) MPI_Comm_free(&intra_);
}

std::string Topology::describe() const {
  std::string s =
      std::to_string(num_nodes_) + " node(s) x " + std::to_string(ranks_per_node_) + " rank(s):";
  for (size_t r = 0; r < places_.size(); ++r) {
    s += (r == 0 ? " rank " : ", rank ") + std::to_string(r) + " node " +
         std::to_string(places_[r].node) + " local " + std::to_string(places_[r].local_rank);
  }
  return s;
}

}  // namespace dstrain::launch
