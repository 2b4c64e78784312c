#include "runtime/checkpoint/crc32_fast.h"

#include <zlib.h>

namespace dstrain::runtime::checkpoint {

// No carry-less multiply kernel for this architecture: zlib does all the work.
bool crc32_fast_available() { return false; }

uint32_t crc32_fast(uint32_t crc, const void* data, size_t n) {
  return static_cast<uint32_t>(::crc32(crc, static_cast<const Bytef*>(data), static_cast<uInt>(n)));
}

}  // namespace dstrain::runtime::checkpoint
