#pragma once
// offload.ratio: which units keep their state in the offload tiers and which keep it on the
// device (DeepSpeed's offload_optimizer.ratio, ZeRO-Offload++). The engine and `dstrain plan`
// both place state by this one function.
#include <vector>

#include "base/config.h"
#include "base/unit.h"

namespace dstrain::sharding {

// Per unit: true where its buffers' optimizer state (and, with offload.params, its parameter
// shards) live in the offload tiers. Nothing is offloaded when offload.optimizer = "none";
// otherwise units are taken from the last one backwards until they hold at least
// offload.ratio of the model's parameters (tied parameters count once, with their owner). The
// first units stay on the device, so the next forward runs through them while the host
// optimizer still updates the later ones.
std::vector<bool> offloaded_units(const base::UnitList& units, const base::OffloadConfig& offload);

}  // namespace dstrain::sharding
