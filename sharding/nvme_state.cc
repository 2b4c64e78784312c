#include "sharding/nvme_state.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace dstrain::sharding {
namespace {

base::Status not_fetched(int shard) {
  return base::Status::Internal("nvme state: shard " + std::to_string(shard) + " was not fetched");
}

size_t aligned(size_t bytes) {
  return (bytes + offload::kHostAlignment - 1) / offload::kHostAlignment * offload::kHostAlignment;
}

}  // namespace

base::StatusOr<std::unique_ptr<NvmeStateFile>> NvmeStateFile::create(
    const std::string& path, const std::vector<int64_t>& numels, int arrays, at::ScalarType dtype,
    std::shared_ptr<offload::HostAllocator> allocator, int slots,
    std::unique_ptr<offload::IoEngine> io) {
  if (slots < 2) {
    return base::Status::InvalidArgument("nvme state: at least 2 slots, got " +
                                         std::to_string(slots));
  }
  if (arrays < 1) {
    return base::Status::InvalidArgument("nvme state: at least 1 array, got " +
                                         std::to_string(arrays));
  }
  std::unique_ptr<NvmeStateFile> f(new NvmeStateFile());
  f->path_ = path;
  f->numels_ = numels;
  f->arrays_ = arrays;
  f->dtype_ = dtype;
  size_t slot_bytes = offload::kHostAlignment;
  int64_t offset = 0;
  for (int i = 0; i < static_cast<int>(numels.size()); ++i) {
    f->offsets_.push_back(offset);
    offset += static_cast<int64_t>(f->record_bytes(i));
    slot_bytes = std::max(slot_bytes, f->record_bytes(i));
  }
  // A file left by an earlier run on this rank is scratch: start from an empty one.
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return base::Status::IOError("nvme state: cannot remove " + path + ": " +
                                 offload::errno_text(errno));
  }
  ASSIGN_OR_RETURN(f->file_, io->open(path, /*create=*/true));
  f->io_ = std::move(io);
  f->allocator_ = std::move(allocator);
  for (int s = 0; s < slots; ++s) {
    Slot slot;
    ASSIGN_OR_RETURN(slot.buffer, f->allocator_->allocate(slot_bytes));
    f->slots_.push_back(std::move(slot));
  }
  return f;
}

NvmeStateFile::~NvmeStateFile() {
  // Transfers in flight write into our slots: let them end before the memory goes.
  for (Slot& s : slots_) (void)finish(s);
  if (io_ && file_ >= 0) (void)io_->close(file_);
  ::unlink(path_.c_str());
}

size_t NvmeStateFile::array_bytes(int shard) const {
  return aligned(static_cast<size_t>(numels_[shard]) * c10::elementSize(dtype_));
}

NvmeRecord NvmeStateFile::views(void* base, int shard) const {
  const int64_t n = numels_[shard];
  auto* bytes = static_cast<char*>(base);
  NvmeRecord record;
  for (int a = 0; a < arrays_; ++a) {
    record.push_back(
        at::from_blob(bytes + a * array_bytes(shard), {n}, at::TensorOptions().dtype(dtype_)));
  }
  return record;
}

base::Status NvmeStateFile::finish(Slot& slot) {
  if (!slot.reading && !slot.writing) return base::Status::Ok();
  slot.reading = slot.writing = false;
  return io_->wait(slot.ticket).with_context("nvme state " + path_);
}

NvmeStateFile::Slot* NvmeStateFile::slot_of(int shard) {
  for (Slot& s : slots_) {
    if (s.shard == shard) return &s;
  }
  return nullptr;
}

base::Status NvmeStateFile::retire(int shard) {
  base::Status first;
  for (Slot& s : slots_) {
    if (s.shard != shard || !s.writing) continue;
    base::Status st = finish(s);
    if (first.ok() && !st.ok()) first = st;
    s.shard = -1;
  }
  return first;
}

base::StatusOr<NvmeStateFile::Slot*> NvmeStateFile::free_slot(int& turn, int count) {
  Slot& slot = slots_[turn];
  turn = (turn + 1) % count;
  RETURN_IF_ERROR(finish(slot));  // its previous shard's write-back
  slot.shard = -1;
  return &slot;
}

base::Status NvmeStateFile::write_behind(int shard, const NvmeRecord& record) {
  RETURN_IF_ERROR(retire(shard));
  // Two slots take turns: copying one record overlaps writing the other.
  ASSIGN_OR_RETURN(Slot * slot, free_slot(behind_turn_, 2));
  const NvmeRecord dst = views(slot->buffer.data(), shard);
  for (int a = 0; a < arrays_; ++a) {
    if (record[a].defined()) {
      dst[a].copy_(record[a]);
    } else {
      dst[a].zero_();
    }
  }
  ASSIGN_OR_RETURN(slot->ticket, io_->submit(offload::IoOp::kWrite, file_, offsets_[shard],
                                             slot->buffer.data(), record_bytes(shard)));
  slot->shard = shard;
  slot->writing = true;
  return base::Status::Ok();
}

base::Status NvmeStateFile::write(int shard, const NvmeRecord& record) {
  RETURN_IF_ERROR(write_behind(shard, record));
  return retire(shard);
}

base::Status NvmeStateFile::read(int shard, const NvmeRecord& record) {
  RETURN_IF_ERROR(retire(shard));
  Slot& slot = slots_[0];
  RETURN_IF_ERROR(finish(slot));
  slot.shard = -1;
  ASSIGN_OR_RETURN(offload::IoTicket t, io_->submit(offload::IoOp::kRead, file_, offsets_[shard],
                                                    slot.buffer.data(), record_bytes(shard)));
  RETURN_IF_ERROR(io_->wait(t).with_context("nvme state " + path_));
  const NvmeRecord src = views(slot.buffer.data(), shard);
  for (int a = 0; a < arrays_; ++a) record[a].copy_(src[a]);
  return base::Status::Ok();
}

base::Status NvmeStateFile::fetch(int shard) {
  RETURN_IF_ERROR(retire(shard));
  ASSIGN_OR_RETURN(Slot * slot, free_slot(next_slot_, static_cast<int>(slots_.size())));
  slot->shard = shard;
  ASSIGN_OR_RETURN(slot->ticket, io_->submit(offload::IoOp::kRead, file_, offsets_[shard],
                                             slot->buffer.data(), record_bytes(shard)));
  slot->reading = true;
  return base::Status::Ok();
}

base::StatusOr<NvmeRecord> NvmeStateFile::acquire(int shard) {
  Slot* slot = slot_of(shard);
  if (slot == nullptr) return not_fetched(shard);
  RETURN_IF_ERROR(finish(*slot));
  return views(slot->buffer.data(), shard);
}

base::Status NvmeStateFile::release(int shard) {
  Slot* slot = slot_of(shard);
  if (slot == nullptr) return not_fetched(shard);
  ASSIGN_OR_RETURN(slot->ticket, io_->submit(offload::IoOp::kWrite, file_, offsets_[shard],
                                             slot->buffer.data(), record_bytes(shard)));
  slot->writing = true;
  return base::Status::Ok();
}

void NvmeStateFile::discard(int shard) {
  if (Slot* slot = slot_of(shard)) slot->shard = -1;
}

base::Status NvmeStateFile::flush() {
  base::Status first;
  for (Slot& s : slots_) {
    base::Status st = finish(s);
    if (first.ok() && !st.ok()) first = st;
    s.shard = -1;
  }
  return first;
}

}  // namespace dstrain::sharding
