#pragma once
// CRC-32 (zlib's polynomial, as Python's zlib.crc32 computes it) of checkpoint files, whole and
// per block. Writers checksum each data region while it is written and combine the regions with
// the metadata gaps between them, so a file is read back only where HDF5 wrote it.
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

// Appends the crc of `n` bytes that lie at file offset `offset` to `out`, one region per
// `block_bytes` block they touch, so block_crc32s() can use them.
void checksum_by_block(int64_t offset, const void* data, int64_t n, int64_t block_bytes,
                       std::vector<ChecksummedRegion>& out);
// The crc of every `block_bytes` block of the file (the last one may be shorter), reading only
// the bytes not covered by `known` (non-overlapping regions, none crossing a block boundary).
base::StatusOr<std::vector<uint32_t>> block_crc32s(const std::string& path, int64_t file_size,
                                                   int64_t block_bytes,
                                                   std::vector<ChecksummedRegion> known);
// The crc of the whole file from the crcs of its blocks.
uint32_t fold_block_crc32s(const std::vector<uint32_t>& blocks, int64_t block_bytes,
                           int64_t file_size);
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
