// libFuzzer target: the safetensors reader (runtime/hf). The input is written as a file (the
// reader takes a path); a file that opens must let every tensor be read in full and in pieces
// without reading outside the file.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "runtime/hf/safetensors.h"
#include "tests/fuzz/fuzz_temp_dir.h"

namespace {

// Real tensors can be gigabytes; a fuzzed header only gets its data read when it is small.
constexpr uint64_t kMaxReadBytes = 1 << 20;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const dstrain::fuzz::TempDir dir;
  if (!dir.ok() || !dir.write("model.safetensors", data, size)) return 0;
  auto file = dstrain::runtime::hf::SafetensorsFile::open(dir.path() + "/model.safetensors");
  if (!file.ok()) return 0;
  std::vector<uint8_t> buf;
  for (const auto& t : file->tensors()) {
    if (file->find(t.name) != &t) __builtin_trap();
    uint64_t n = t.nbytes();
    if (n > kMaxReadBytes) continue;
    buf.resize(n);
    if (!file->read(t, 0, n, buf.data()).ok()) __builtin_trap();
    if (n >= 2 && !file->read(t, n / 2, n - n / 2, buf.data()).ok()) __builtin_trap();
    // Reading past the tensor's end must be refused, never performed.
    if (file->read(t, n, 1, buf.data()).ok()) __builtin_trap();
  }
  return 0;
}
