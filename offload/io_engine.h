#pragma once
// Asynchronous file I/O for the NVMe offload tier. The swapper submits reads of the next unit and
// writes of the previous one, computes, and waits later; an IoEngine splits each transfer into
// block-sized requests and keeps at most queue_depth of them in flight. The interface lets tests
// put a fault-injecting engine (offload/fault_io_engine.h) where the real one (io_uring,
// offload/uring_io_engine.h) would be. Torch-free.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "base/status.h"

namespace dstrain::offload {

enum class IoOp { kRead, kWrite };

struct IoOptions {
  int queue_depth = 32;          // requests in flight over all transfers, 1 to 4096
  size_t block_bytes = 1 << 20;  // size of one request; a multiple of kHostAlignment when direct
  bool direct = true;            // O_DIRECT: bypass the page cache; refused by some file systems
};

using IoTicket = uint64_t;

class IoEngine {  // used from one thread (its owner); not thread-safe
 public:
  virtual ~IoEngine() = default;
  // Opens (create: creating it if missing; never truncating) a file; returns a file id.
  virtual base::StatusOr<int> open(const std::string& path, bool create) = 0;
  // kInvalidArgument while transfers on the file have not been waited for.
  virtual base::Status close(int file) = 0;
  // Queues a transfer of `bytes` between `buf` and the file at `offset`. buf, offset and bytes
  // are multiples of 4096 (kHostAlignment) when direct; buf stays alive until wait(). Split
  // into block_bytes requests with at most queue_depth in flight over all transfers.
  virtual base::StatusOr<IoTicket> submit(IoOp op, int file, int64_t offset, void* buf,
                                          size_t bytes) = 0;
  // Waits for one transfer; an error names the path, offset, op and the errno text.
  // A read past end of file (short read that cannot complete) is an error. Each ticket is
  // waited for once.
  virtual base::Status wait(IoTicket ticket) = 0;
  // fdatasync: makes the writes already waited for durable.
  virtual base::Status sync(int file) = 0;
};

const char* io_op_name(IoOp op);

// The error of a request that failed with errno `err`, worded the same by every engine:
// "write of PATH at offset N (B bytes): No space left on device (ENOSPC)".
base::Status io_request_error(IoOp op, const std::string& path, int64_t offset, size_t bytes,
                              int err);

// A request that ended early and cannot go on: a read that met the end of the file after `got`
// bytes, or a write the kernel accepted only `got` bytes of.
base::Status io_short_error(IoOp op, const std::string& path, int64_t offset, size_t bytes,
                            size_t got);

// strerror's text and, for the errors I/O requests meet, the symbolic name: "... (ENOSPC)".
std::string errno_text(int err);

// kInvalidArgument for a negative offset, a null buffer, or (direct) a buffer, offset or size
// that is not a multiple of kHostAlignment, as O_DIRECT needs.
base::Status check_transfer(const void* buf, int64_t offset, size_t bytes, bool direct);

}  // namespace dstrain::offload
