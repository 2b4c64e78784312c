#pragma once
// Validation with the location of each key, so errors point at the line that set it.
#include <functional>
#include <map>
#include <string>

#include "base/config.h"
#include "base/status.h"

namespace dstrain::launch {

// Key name -> where its value came from: "FILE:LINE" or "--set". Keys left at their default are
// absent.
using KeyOrigins = std::map<std::string, std::string, std::less<>>;

// Each key's own range or allowed set, then the rules that tie keys together. The first broken
// rule is returned as `ORIGIN: KEY: reason`.
base::Status validate_config_at(const base::Config& cfg, const KeyOrigins& origins);

}  // namespace dstrain::launch
