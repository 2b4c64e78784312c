#pragma once
// Which units the engine recomputes in backward (train.activation_checkpointing). A recomputed
// unit runs its forward under no-grad keeping only its input; backward re-runs it with grad
// enabled just before its gradient is taken (DESIGN.md). The plan is a pure function of the unit
// names, so it is the same on every rank.
#include <string>
#include <vector>

#include "base/status.h"
#include "base/unit.h"

namespace dstrain::sharding {

// "layers.N": the units that train.recompute_layers counts.
bool is_decoder_layer(const base::Unit& unit);

// One flag per unit: true = recompute in backward.
//   "none":      nothing.
//   "full":      every unit but the last (the head's backward starts as soon as its forward
//                ends, so recomputing it would save nothing).
//   "selective": every other decoder layer ("layers.N" units), starting with the first: about
//                half the activation memory of the layers for a third more layer forward work;
//                with `layers` >= 0 (train.recompute_layers), that many decoder layers, spread
//                evenly (layer i of L when i k mod L < k; k = L / 2 is every other one), so
//                memory and recomputation move in steps of one layer between none and all.
// kInvalidArgument naming train.activation_checkpointing for any other policy, or
// train.recompute_layers when `layers` exceeds the decoder layers.
base::StatusOr<std::vector<bool>> recompute_plan(const base::UnitList& units,
                                                 const std::string& policy, int64_t layers = -1);

}  // namespace dstrain::sharding
