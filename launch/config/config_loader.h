#pragma once
// TOML file + `--set KEY=VALUE` overrides -> a validated base::Config. Every key of base/config.h
// is a TOML key `section.key` (docs/config.md). Every error is kInvalidArgument (exit 2) with a
// message `FILE:LINE: KEY: reason`, or `--set: KEY: reason` for an override.
#include <string>
#include <string_view>
#include <vector>

#include "base/config.h"
#include "base/status.h"

namespace dstrain::launch {

// Reads the TOML file at `path` (empty: no file, only defaults), applies `overrides` in order
// ("train.steps=20", "lora.targets=[\"q\",\"v\"]", "run.dir=/tmp/x"), then validates.
base::StatusOr<base::Config> load_config(const std::string& path,
                                         const std::vector<std::string>& overrides);

// As load_config, for TOML text already in memory; `source_name` names it in messages and is
// stored in Config::source.
base::StatusOr<base::Config> parse_config(std::string_view toml_text,
                                          const std::string& source_name,
                                          const std::vector<std::string>& overrides);

// Every key, in documentation order, as TOML that parse_config reads back to an equal Config.
std::string config_to_toml(const base::Config& cfg);

// Ranges, allowed values and cross-field rules. Without line information the messages are
// `SOURCE: KEY: reason` (SOURCE = cfg.source, or "config" when empty).
base::Status validate_config(const base::Config& cfg);

}  // namespace dstrain::launch
