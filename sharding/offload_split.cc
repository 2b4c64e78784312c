#include "sharding/offload_split.h"

#include <cstdint>

namespace dstrain::sharding {

std::vector<bool> offloaded_units(const base::UnitList& units, const base::OffloadConfig& offload) {
  const int n = static_cast<int>(units.size());
  std::vector<bool> out(n, offload.optimizer != "none");
  if (offload.optimizer == "none" || offload.ratio >= 1.0) return out;
  std::vector<int64_t> owned(n, 0);
  int64_t total = 0;
  for (int u = 0; u < n; ++u) {
    for (const base::ParamSpec& p : units[u]->schema()) {
      if (p.tied_to.empty()) owned[u] += p.numel();
    }
    total += owned[u];
  }
  const double want = offload.ratio * static_cast<double>(total);
  int64_t taken = 0;
  for (int u = n - 1; u >= 0; --u) {
    out[u] = static_cast<double>(taken) < want;
    if (out[u]) taken += owned[u];
  }
  return out;
}

}  // namespace dstrain::sharding
