#pragma once
// Strict JSON reading for Hugging Face files (safetensors headers, index and config files).
// nlohmann's parser keeps the last of two equal keys; a checkpoint with a tensor named twice is
// ambiguous, so these functions reject duplicate keys at any depth.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "base/status.h"

namespace dstrain::runtime::hf {

// Largest JSON text read: bounds memory before parsing an untrusted file.
inline constexpr uint64_t kMaxJsonBytes = 100ull * 1000 * 1000;

// Deepest nesting of arrays and objects accepted. Real files nest 2 to 4 levels; the limit keeps
// nlohmann's recursive functions (dump, copy, compare) from overflowing the stack on a hostile
// file.
inline constexpr int kMaxJsonDepth = 64;

// Parses `text`; errors are kBadInput and start with `origin` (a file name, or "file: header").
// Text nested deeper than kMaxJsonDepth is refused before parsing.
base::StatusOr<nlohmann::json> parse_json_strict(const std::string& text,
                                                 const std::string& origin);

// Reads and parses a JSON file of at most kMaxJsonBytes whose top level must be an object.
base::StatusOr<nlohmann::json> read_json_object_file(const std::string& path);

// Reads `<hf_dir>/config.json` of a Hugging Face model directory (not interpreted here).
base::StatusOr<nlohmann::json> read_config_json(const std::string& hf_dir);

// `dir/name` without doubling a trailing slash.
std::string join_path(const std::string& dir, const std::string& name);

}  // namespace dstrain::runtime::hf
