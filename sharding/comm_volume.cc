#include "sharding/comm_volume.h"

#include <cmath>

namespace dstrain::sharding {
namespace {

// Where a collective's ring runs.
enum class Group { kWorld, kNode, kReplicas };

struct Bytes {
  double intra = 0;
  double inter = 0;
};

class Tally {
 public:
  Tally(int64_t nodes, int64_t per_node) : nodes_(nodes), per_node_(per_node) {}
  // `passes`: 1 for an all-gather or reduce-scatter, 2 for an all-reduce.
  void add(Group group, double buffer_bytes, int passes, double times = 1) {
    const double g = static_cast<double>(size(group));
    const double sent = times * passes * (g - 1) / g * buffer_bytes;
    switch (group) {
      case Group::kWorld: {
        const double leaving = nodes_ > 1 ? 1.0 / static_cast<double>(per_node_) : 0.0;
        bytes_.inter += sent * leaving;
        bytes_.intra += sent * (1 - leaving);
        break;
      }
      case Group::kNode:
        bytes_.intra += sent;
        break;
      case Group::kReplicas:
        bytes_.inter += sent;
        break;
    }
  }
  CommVolume result() const { return {std::llround(bytes_.intra), std::llround(bytes_.inter)}; }

 private:
  int64_t size(Group group) const {
    switch (group) {
      case Group::kWorld:
        return nodes_ * per_node_;
      case Group::kNode:
        return per_node_;
      case Group::kReplicas:
        return nodes_;
    }
    return 1;
  }
  int64_t nodes_;
  int64_t per_node_;
  Bytes bytes_;
};

constexpr int kGatherOrScatter = 1;
constexpr int kAllReduce = 2;

}  // namespace

base::StatusOr<CommVolume> comm_volume_per_step(const CommVolumeInput& in) {
  if (in.stage < 0 || in.stage > 3) {
    return base::Status::InvalidArgument("zero.stage " + std::to_string(in.stage) +
                                         " is out of range (0 to 3)");
  }
  if (in.shard_group != "world" && in.shard_group != "node") {
    return base::Status::InvalidArgument("zero.shard_group \"" + in.shard_group +
                                         "\" is neither \"world\" nor \"node\"");
  }
  if (in.world_size < 1 || in.ranks_per_node < 1 || in.world_size % in.ranks_per_node != 0) {
    return base::Status::InvalidArgument("ranks per node " + std::to_string(in.ranks_per_node) +
                                         " must be at least 1 and divide the " + "world size " +
                                         std::to_string(in.world_size));
  }
  if (in.micro_batches < 1) {
    return base::Status::InvalidArgument("micro-batches per step must be at least 1, got " +
                                         std::to_string(in.micro_batches));
  }
  const int64_t nodes = in.world_size / in.ranks_per_node;
  const bool hybrid = in.shard_group == "node";
  const Group shard = hybrid ? Group::kNode : Group::kWorld;
  const double k = static_cast<double>(in.micro_batches);
  const double p = static_cast<double>(in.gathered_param_bytes);
  const double t = static_cast<double>(in.trainable_param_bytes);
  const double g = static_cast<double>(in.grad_bytes);
  Tally tally(nodes, in.ranks_per_node);
  switch (in.stage) {
    case 0:
    case 1:
      tally.add(shard, g, kAllReduce);
      if (hybrid) tally.add(Group::kReplicas, g, kAllReduce);
      if (in.stage == 1) tally.add(shard, t, kGatherOrScatter);
      break;
    case 2:
    case 3:
      tally.add(shard, g, kGatherOrScatter, k);
      if (in.stage == 2) tally.add(shard, t, kGatherOrScatter);
      if (in.stage == 3) tally.add(shard, p, kGatherOrScatter, 2 * k);
      if (hybrid)
        tally.add(Group::kReplicas, g / static_cast<double>(in.ranks_per_node), kAllReduce);
      break;
  }
  return tally.result();
}

}  // namespace dstrain::sharding
