#pragma once
// State on NVMe (DESIGN.md "Offload tiers"): one scratch file per rank and kind holds a record per
// shard of `arrays` arrays of one dtype side by side, each 4096-aligned, so one read and one
// write move a shard. offload.optimizer = nvme keeps each trainable shard's fp32 master, exp_avg
// and exp_avg_sq (three arrays), offload.params = nvme each parameter shard in the compute dtype
// (one array). The host keeps only a few slots: the host optimizer fetches shard i + 1 while the
// CPU updates shard i and writes shard i - 1 back (offload/io_engine.h does the I/O; io_uring
// with O_DIRECT in real runs).
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

// The arrays of one record, as views of a host slot or as caller memory.
using NvmeRecord = std::vector<at::Tensor>;

class NvmeStateFile {
 public:
  // Creates (replacing) `path` sized for records of `arrays` arrays of `numels[i]` elements of
  // `dtype`, with `slots` host slots (at least 2) from `allocator`. `io` does the transfers.
  static base::StatusOr<std::unique_ptr<NvmeStateFile>> create(
      const std::string& path, const std::vector<int64_t>& numels, int arrays, at::ScalarType dtype,
      std::shared_ptr<offload::HostAllocator> allocator, int slots,
      std::unique_ptr<offload::IoEngine> io);
  ~NvmeStateFile();
  NvmeStateFile(const NvmeStateFile&) = delete;
  NvmeStateFile& operator=(const NvmeStateFile&) = delete;

  int num_shards() const { return static_cast<int>(offsets_.size()); }
  int64_t numel(int shard) const { return numels_[shard]; }
  const std::string& path() const { return path_; }

  // Synchronous whole-record transfers between the file and `record` (CPU tensors of the
  // record's dtype and size, one per array): checkpoints, gathers.
  base::Status write(int shard, const NvmeRecord& record);
  base::Status read(int shard, const NvmeRecord& record);
  // Initialisation: copies `record` into the next slot and starts writing it, returning while
  // the transfer runs, so writing shard i overlaps preparing shard i + 1. An undefined array is
  // written as zeros (the optimizer's moments). flush() waits for these writes.
  base::Status write_behind(int shard, const NvmeRecord& record);

  // The update pipeline. fetch() starts reading a shard into a free slot (first waiting for that
  // slot's previous write-back); acquire() waits for the read and returns views of the slot,
  // valid until release(), which starts writing them back. flush() waits for every write-back
  // (the file is scratch: nothing asks for durability). A shard is fetched, acquired and
  // released once per step, in order, with at most `slots` - 1 fetched and not yet released.
  // Any transfer of a shard waits first for a write of that shard still in flight, so a read
  // never overtakes the write before it.
  base::Status fetch(int shard);
  base::StatusOr<NvmeRecord> acquire(int shard);
  base::Status release(int shard);
  base::Status flush();
  // Frees an acquired shard's slot without writing it back (it was only read).
  void discard(int shard);

 private:
  struct Slot {
    offload::HostBuffer buffer;
    int shard = -1;  // the shard it holds or is moving
    bool reading = false, writing = false;
    offload::IoTicket ticket = 0;
  };
  NvmeStateFile() = default;
  // Bytes of one array and of one record (`arrays_` arrays, each 4096-aligned).
  size_t array_bytes(int shard) const;
  size_t record_bytes(int shard) const { return arrays_ * array_bytes(shard); }
  NvmeRecord views(void* base, int shard) const;
  base::Status finish(Slot& slot);  // waits for the slot's transfer in flight, if any
  Slot* slot_of(int shard);
  // Waits for a write of `shard` still in flight from any slot, and frees that slot.
  base::Status retire(int shard);
  // Slot `turn` of the first `count`, its previous transfer waited for; advances `turn`.
  base::StatusOr<Slot*> free_slot(int& turn, int count);

  std::string path_;
  std::shared_ptr<offload::HostAllocator> allocator_;  // outlives the slots' buffers
  std::unique_ptr<offload::IoEngine> io_;
  int file_ = -1;
  std::vector<int64_t> numels_;
  int arrays_ = 3;
  at::ScalarType dtype_ = at::kFloat;
  std::vector<int64_t> offsets_;  // byte offset of each shard's record
  std::vector<Slot> slots_;
  int next_slot_ = 0;    // round robin of fetch()
  int behind_turn_ = 0;  // slot 0 or 1 for write_behind()
};

}  // namespace dstrain::sharding
