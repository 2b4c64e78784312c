#pragma once
// A CRC-32 (zlib's polynomial) kernel that uses the CPU's carry-less multiply where it has one.
// zlib's table-driven crc32 runs at about 2 GB/s, as slow as an NVMe drive, so checksumming a
// checkpoint in series with its I/O would halve the bandwidth. Which file implements this is
// chosen by CMake per architecture (crc32_fast_x86.cc, crc32_fast_generic.cc).
#include <cstddef>
#include <cstdint>

namespace dstrain::runtime::checkpoint {

// True when crc32_fast() may be called on this CPU.
bool crc32_fast_available();
// zlib's crc32(crc, data, n) for n >= kCrc32FastMinBytes; only when crc32_fast_available().
uint32_t crc32_fast(uint32_t crc, const void* data, size_t n);

inline constexpr size_t kCrc32FastMinBytes = 64;

}  // namespace dstrain::runtime::checkpoint
