// libFuzzer target: the TOML config loader (launch/config) on arbitrary text. Any input must end
// in a Config or an error Status: no crash, leak or undefined behaviour. A Config that loads must
// also survive config_to_toml -> parse_config, which the training launcher relies on when it
// stores the config in a checkpoint.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "launch/config/config_loader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto cfg = dstrain::launch::parse_config(text, "fuzz.toml", {});
  if (!cfg.ok()) return 0;
  std::string again = dstrain::launch::config_to_toml(*cfg);
  auto reparsed = dstrain::launch::parse_config(again, "fuzz-roundtrip.toml", {});
  // A valid config whose own serialisation does not load is a bug worth a crash report.
  if (!reparsed.ok()) __builtin_trap();
  return 0;
}
