// libFuzzer target: the .dstok token file reader (runtime/data). The input is written as a file
// (the reader maps a path); a file that opens has been validated completely, so every accessor
// must then stay in bounds for every index the header allows.
#include <cstddef>
#include <cstdint>

#include "runtime/data/token_file.h"
#include "tests/fuzz/fuzz_temp_dir.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const dstrain::fuzz::TempDir dir;
  if (!dir.ok() || !dir.write("fuzz.dstok", data, size)) return 0;
  auto file = dstrain::runtime::TokenFile::open(dir.path() + "/fuzz.dstok");
  if (!file.ok()) return 0;
  uint64_t sum = 0;
  for (int64_t i = 0; i < file->num_tokens(); ++i) {
    uint32_t t = file->token(i);
    if (t >= file->vocab_size()) __builtin_trap();
    sum += t + (file->predict(i) ? 1 : 0);
  }
  for (int64_t d = 0; d < file->num_docs(); ++d) {
    if (file->doc_begin(d) > file->doc_end(d) || file->doc_end(d) > file->num_tokens()) {
      __builtin_trap();
    }
  }
  // Keeps the token loop from being optimised away.
  volatile uint64_t sink = sum;
  (void)sink;
  return 0;
}
