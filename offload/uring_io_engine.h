#pragma once
// The IoEngine of real runs: io_uring through liburing, O_DIRECT by default. A reaper thread
// inside the engine refills the ring as requests complete, so a transfer larger than
// queue_depth x block_bytes keeps moving while its owner computes; the owner only blocks in wait().
#include <memory>

#include "base/status.h"
#include "offload/io_engine.h"

namespace dstrain::offload {

// kInvalidArgument for a queue depth outside 1..4096, a zero block size, or (direct) a block size
// that is not a multiple of kHostAlignment; kInternal when the kernel refuses io_uring.
base::StatusOr<std::unique_ptr<IoEngine>> make_uring_io_engine(const IoOptions& options);

}  // namespace dstrain::offload
