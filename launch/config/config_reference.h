#pragma once
// The key reference of docs/config.md, generated from the schema so the two cannot disagree
// (tests/launch/config compares them).
#include <string>

namespace dstrain::launch {

// One Markdown table per TOML table: key, type, default, allowed values, meaning.
std::string config_reference_markdown();

}  // namespace dstrain::launch
