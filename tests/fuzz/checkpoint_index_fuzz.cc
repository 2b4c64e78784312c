// libFuzzer target: the checkpoint index reader (runtime/checkpoint index.json) on arbitrary
// text. parse_index validates as it parses; an index it accepts must serialise and parse back.
#include <cstddef>
#include <cstdint>
#include <string>

#include "runtime/checkpoint/index.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace ckpt = dstrain::runtime::checkpoint;
  std::string text(reinterpret_cast<const char*>(data), size);
  auto index = ckpt::parse_index(text, "fuzz/index.json");
  if (!index.ok()) return 0;
  for (const auto& f : index->files) (void)ckpt::block_count(f);
  auto again = ckpt::parse_index(ckpt::index_to_json(*index), "fuzz-roundtrip/index.json");
  if (!again.ok()) __builtin_trap();
  return 0;
}
