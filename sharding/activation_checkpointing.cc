#include "sharding/activation_checkpointing.h"

namespace dstrain::sharding {

bool is_decoder_layer(const base::Unit& unit) { return unit.name().rfind("layers.", 0) == 0; }

base::StatusOr<std::vector<bool>> recompute_plan(const base::UnitList& units,
                                                 const std::string& policy, int64_t layers) {
  const size_t n = units.size();
  std::vector<bool> plan(n, false);
  if (policy == "none") return plan;
  if (policy == "full") {
    for (size_t u = 0; u + 1 < n; ++u) plan[u] = true;
    return plan;
  }
  if (policy == "selective") {
    int64_t total = 0;
    for (size_t u = 0; u + 1 < n; ++u) total += is_decoder_layer(*units[u]) ? 1 : 0;
    if (layers > total) {
      return base::Status::InvalidArgument("train.recompute_layers = " + std::to_string(layers) +
                                           " exceeds the model's " + std::to_string(total) +
                                           " decoder layers");
    }
    int64_t layer = 0;
    for (size_t u = 0; u + 1 < n; ++u) {
      if (!is_decoder_layer(*units[u])) continue;
      // i k mod L takes each multiple of gcd(k, L) below L equally often: exactly k fall below k.
      plan[u] = layers < 0 ? layer % 2 == 0 : (layer * layers) % total < layers;
      ++layer;
    }
    return plan;
  }
  return base::Status::InvalidArgument("train.activation_checkpointing \"" + policy +
                                       "\" is not one of none, full, selective");
}

}  // namespace dstrain::sharding
