#pragma once
// CRC-32 (zlib's polynomial, as Python's zlib.crc32 computes it) of checkpoint files. Writers
// checksum each data region while it is written and combine the regions with the metadata
// gaps between them, so a file is read back only where HDF5 wrote it.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"

namespace dstrain::runtime::checkpoint {

uint32_t crc32_update(uint32_t crc, const void* data, size_t n);
// crc of A+B from crc(A), crc(B) and |B|.
uint32_t crc32_combine(uint32_t crc_a, uint32_t crc_b, int64_t len_b);

struct ChecksummedRegion {
  int64_t offset = 0;  // bytes into the file
  int64_t size = 0;
  uint32_t crc = 0;
};

// The file's crc, reading only the bytes not covered by `known` (non-overlapping regions).
base::StatusOr<uint32_t> file_crc32(const std::string& path, int64_t file_size,
                                    std::vector<ChecksummedRegion> known);
// The file's size and crc, reading it whole.
struct FileDigest {
  int64_t size = 0;
  uint32_t crc = 0;
};
base::StatusOr<FileDigest> file_digest(const std::string& path);

}  // namespace dstrain::runtime::checkpoint
