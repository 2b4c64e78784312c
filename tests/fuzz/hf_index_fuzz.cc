// libFuzzer target: the sharded safetensors index reader (runtime/hf model.safetensors.index.json).
// The fuzzed bytes are the index; two small valid shards it may name sit beside it, so inputs
// that get past the JSON checks reach the shard matching and lookup code.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/hf/sharded_index.h"
#include "tests/fuzz/fuzz_temp_dir.h"

namespace {

namespace hf = dstrain::runtime::hf;

// Writes the shards once; the seed corpus names these files and tensors.
bool write_shards(const dstrain::fuzz::TempDir& dir) {
  const float a[4] = {1, 2, 3, 4};
  const float b[2] = {5, 6};
  std::vector<hf::TensorData> first = {{"a", "F32", {2, 2}, a, sizeof(a)},
                                       {"b", "F32", {2}, b, sizeof(b)}};
  std::vector<hf::TensorData> second = {{"c", "F32", {1}, a, sizeof(float)}};
  return hf::write_safetensors(dir.path() + "/model-00001-of-00002.safetensors", first, {}).ok() &&
         hf::write_safetensors(dir.path() + "/model-00002-of-00002.safetensors", second, {}).ok();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const dstrain::fuzz::TempDir dir;
  static const bool shards_ok = dir.ok() && write_shards(dir);
  if (!shards_ok || !dir.write(hf::kIndexFileName, data, size)) return 0;
  auto ckpt = hf::ShardedCheckpoint::open_index(dir.path() + "/" + hf::kIndexFileName);
  if (!ckpt.ok()) return 0;
  for (const std::string& name : ckpt->names()) {
    auto ref = ckpt->lookup(name);
    if (!ref.ok() || ref->info->name != name || ref->file->find(name) != ref->info) {
      __builtin_trap();
    }
  }
  if (ckpt->lookup("no such tensor").ok()) __builtin_trap();
  return 0;
}
