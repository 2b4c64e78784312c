#pragma once
// An IoEngine that makes chosen requests fail, for tests of everything that does I/O through an
// IoEngine (the engines themselves, the NVMe swapper): EIO, ENOSPC on a write, or a read that
// ends early at what looks like the end of the file. It wraps another engine: requests that
// no fault matches go through to it unchanged, so data written before a fault stays readable.
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "base/status.h"
#include "offload/io_engine.h"

namespace dstrain::offload {

enum class FaultKind {
  kEio,        // any request fails with EIO and transfers nothing
  kEnospc,     // a write fails with ENOSPC and writes nothing; reads are not affected
  kShortRead,  // a read gets the first half of its bytes (rounded down to 4096), then end of file
};

// Which requests fail: set exactly one of `request` (the Nth request, 0-based, counted over
// every block-sized request submitted through the engine) or `byte` (every request whose range
// covers that byte offset, in any file).
struct Fault {
  FaultKind kind = FaultKind::kEio;
  std::optional<int64_t> request;
  std::optional<int64_t> byte;
};

struct FaultOptions {
  size_t block_bytes = 1 << 20;  // how transfers are cut into requests; the inner engine's size
  std::vector<Fault> faults;
};

// kInvalidArgument for a null inner engine, a zero block size, or a fault that sets neither or
// both of `request` and `byte`.
base::StatusOr<std::unique_ptr<IoEngine>> make_fault_io_engine(std::unique_ptr<IoEngine> inner,
                                                               FaultOptions options);

}  // namespace dstrain::offload
