#pragma once
// Optimizer state on NVMe (offload.optimizer = nvme, DESIGN.md "Offload tiers"). One file per
// rank holds every trainable shard's fp32 master, exp_avg and exp_avg_sq side by side at a
// 4096-aligned offset, so one read and one write move a shard. The host keeps only a few slots:
// the host optimizer fetches shard i + 1 while the CPU updates shard i and writes shard i - 1
// back (offload/io_engine.h does the I/O; io_uring with O_DIRECT in real runs).
//
// Threading: every call comes from the engine's thread (the IoEngine is single-owner); the CPU
// update of an acquired slot may run on another thread until release().
#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "offload/host_buffer.h"
#include "offload/io_engine.h"

namespace dstrain::sharding {

// The three fp32 state tensors of one shard, as views of a host slot or of caller memory.
struct ShardState {
  at::Tensor master;
  at::Tensor exp_avg;
  at::Tensor exp_avg_sq;
};

class NvmeStateFile {
 public:
  // Creates (replacing) `path` sized for shards of `numels` elements, with `slots` host slots
  // (at least 2) from `allocator`. `io` does the transfers.
  static base::StatusOr<std::unique_ptr<NvmeStateFile>> create(
      const std::string& path, const std::vector<int64_t>& numels,
      std::shared_ptr<offload::HostAllocator> allocator, int slots,
      std::unique_ptr<offload::IoEngine> io);
  ~NvmeStateFile();
  NvmeStateFile(const NvmeStateFile&) = delete;
  NvmeStateFile& operator=(const NvmeStateFile&) = delete;

  int num_shards() const { return static_cast<int>(offsets_.size()); }
  int64_t numel(int shard) const { return numels_[shard]; }
  const std::string& path() const { return path_; }

  // Synchronous whole-shard transfers between the file and `state` (any contiguous fp32 CPU
  // tensors of the shard's size): initialisation, checkpoints, export.
  base::Status write(int shard, const ShardState& state);
  base::Status read(int shard, const ShardState& state);

  // The update pipeline. fetch() starts reading a shard into a free slot (first waiting for that
  // slot's previous write-back); acquire() waits for the read and returns views of the slot,
  // valid until release(), which starts writing them back. flush() waits for every write-back
  // (the file is scratch: nothing asks for durability). A shard is fetched, acquired and
  // released once per step, in order, with at most `slots` - 1 fetched and not yet released.
  base::Status fetch(int shard);
  base::StatusOr<ShardState> acquire(int shard);
  base::Status release(int shard);
  base::Status flush();

 private:
  struct Slot {
    offload::HostBuffer buffer;
    int shard = -1;                 // the shard it holds or is moving
    bool reading = false, writing = false;
    offload::IoTicket ticket = 0;
  };
  NvmeStateFile() = default;
  // Bytes of one shard's record (three fp32 arrays, each 4096-aligned).
  size_t record_bytes(int shard) const;
  ShardState views(void* base, int shard) const;
  base::Status finish(Slot& slot);  // waits for the slot's transfer in flight, if any
  Slot* slot_of(int shard);

  std::string path_;
  std::shared_ptr<offload::HostAllocator> allocator_;  // outlives the slots' buffers
  std::unique_ptr<offload::IoEngine> io_;
  int file_ = -1;
  std::vector<int64_t> numels_;
  std::vector<int64_t> offsets_;  // byte offset of each shard's record
  std::vector<Slot> slots_;
  int next_slot_ = 0;             // round robin
};

}  // namespace dstrain::sharding
