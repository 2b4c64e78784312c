#include "runtime/checkpoint/state_reader.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <map>

#include "runtime/checkpoint/file_io.h"

namespace dstrain::runtime::checkpoint {
namespace {

const TensorEntry* find_tensor(const CheckpointIndex& index, const std::string& kind,
                               const std::string& name) {
  auto k = index.tensors.find(kind);
  if (k == index.tensors.end()) return nullptr;
  auto t = k->second.find(name);
  return t == k->second.end() ? nullptr : &t->second;
}

}  // namespace

// A copy in progress. Bytes arrive in file order, window by window; a conversion needs whole
// elements, so the bytes of an element split between two windows wait in `carry`.
class Destination {
 public:
  SliceCopy copy;
  int64_t elem = 0;
  bool raw = false;  // same dtype, contiguous: the bytes go as they are
  std::array<char, 8> carry{};
  int64_t carried = 0;

  // Bytes [at, at + n) of the copy (counted from copy.byte_offset), from `src`.
  void put(int64_t at, const char* src, int64_t n) {
    if (raw) {
      if (copy.dst.is_cpu()) {
        std::memcpy(static_cast<char*>(copy.dst.data_ptr()) + at, src, static_cast<size_t>(n));
      } else {
        // One host-to-device copy of the bytes (pinned source: a DMA).
        copy.dst.view(at::kByte).narrow(0, at, n).copy_(
            at::from_blob(const_cast<char*>(src), {n}, at::TensorOptions().dtype(at::kByte)));
      }
      return;
    }
    if (carried > 0) {
      const int64_t take = std::min(n, elem - carried);
      std::memcpy(carry.data() + carried, src, static_cast<size_t>(take));
      carried += take;
      src += take;
      at += take;
      n -= take;
      if (carried < elem) return;
      convert(at / elem - 1, carry.data(), 1);
      carried = 0;
    }
    const int64_t whole = n / elem;
    if (whole > 0) convert(at / elem, src, whole);
    carried = n - whole * elem;
    std::memcpy(carry.data(), src + whole * elem, static_cast<size_t>(carried));
  }

  void convert(int64_t first, const char* src, int64_t count) {
    copy.dst.narrow(0, first, count)
        .copy_(
            at::from_blob(const_cast<char*>(src), {count}, at::TensorOptions().dtype(copy.stored)));
  }
};

// Two read buffers, pinned when the bytes go on to a GPU (the upload is then a DMA).
class ReadBuffers {
 public:
  static base::StatusOr<std::unique_ptr<ReadBuffers>> allocate(int64_t bytes, bool pinned) {
    std::unique_ptr<ReadBuffers> owner(new ReadBuffers());
    ReadBuffers& s = *owner;
    s.view_.bytes = bytes;
    for (int i = 0; i < 2; ++i) {
      if (pinned) {
        // Page-locked memory from the caching host allocator, aligned here for direct I/O.
        s.pinned_[i] = at::empty({bytes + kDirectIoAlignment},
                                 at::TensorOptions().dtype(at::kByte).pinned_memory(true));
        const auto address = reinterpret_cast<uintptr_t>(s.pinned_[i].data_ptr());
        const uintptr_t align = static_cast<uintptr_t>(kDirectIoAlignment);
        s.view_.data[i] = reinterpret_cast<char*>((address + align - 1) / align * align);
      } else {
        ASSIGN_OR_RETURN(s.host_[i], AlignedBuffer::allocate(static_cast<size_t>(bytes)));
        s.view_.data[i] = s.host_[i].data();
      }
    }
    return owner;
  }
  const ReadSlots& view() const { return view_; }

 private:
  at::Tensor pinned_[2];
  AlignedBuffer host_[2];
  ReadSlots view_;
};

at::ScalarType stored_scalar_type(const std::string& dtype) {
  if (dtype == "bf16") return at::kBFloat16;
  if (dtype == "fp16") return at::kHalf;
  return at::kFloat;
}

base::StatusOr<std::vector<SliceCopy>> plan_state_reads(
    const std::string& dir, const CheckpointIndex& index,
    const std::vector<sharding::StateSlice>& slices) {
  std::map<std::string, int> file_of;
  for (size_t i = 0; i < index.files.size(); ++i)
    file_of[index.files[i].name] = static_cast<int>(i);
  std::vector<SliceCopy> copies;
  for (const sharding::StateSlice& s : slices) {
    const std::string kind = sharding::state_kind_name(s.kind);
    const TensorEntry* t = find_tensor(index, kind, s.name);
    if (t == nullptr) {
      return base::Status::BadInput(dir + ": has no " + kind + " of " + s.name +
                                    " (saved from a different model?)");
    }
    if (t->shape != s.full_shape) {
      return base::Status::BadInput(dir + ": " + kind + "/" + s.name + " has shape " +
                                    c10::str(at::IntArrayRef(t->shape)) + ", the model needs " +
                                    c10::str(at::IntArrayRef(s.full_shape)));
    }
    const int64_t elem = dtype_bytes(t->dtype);
    const int64_t lo = s.offset, hi = s.offset + s.data.numel();
    const at::Tensor flat = s.data.reshape({-1});
    for (const Piece& p : t->pieces) {
      const int64_t a = std::max(lo, p.offset), b = std::min(hi, p.offset + p.numel);
      if (a >= b) continue;
      copies.push_back({file_of.at(p.file), p.byte_offset + (a - p.offset) * elem, (b - a) * elem,
                        stored_scalar_type(t->dtype), flat.narrow(0, a - lo, b - a)});
    }
  }
  return copies;
}

StateReader::StateReader() = default;
StateReader::~StateReader() = default;

base::StatusOr<std::unique_ptr<StateReader>> StateReader::open(const std::string& dir,
                                                               const CheckpointIndex& index,
                                                               std::vector<SliceCopy> copies,
                                                               int64_t budget_bytes) {
  std::sort(copies.begin(), copies.end(), [](const SliceCopy& a, const SliceCopy& b) {
    return a.file != b.file ? a.file < b.file : a.byte_offset < b.byte_offset;
  });
  std::unique_ptr<StateReader> r(new StateReader());
  std::vector<ByteRange> ranges;
  bool any_cuda = false;
  for (SliceCopy& c : copies) {
    ranges.push_back({c.file, c.byte_offset, c.bytes});
    any_cuda = any_cuda || c.dst.is_cuda();
    Destination d;
    d.elem = at::elementSize(c.stored);
    d.raw = c.dst.scalar_type() == c.stored && c.dst.is_contiguous();
    d.copy = std::move(c);
    r->dests_.push_back(std::move(d));
  }
  const int64_t slot_bytes = read_slot_bytes(index.files, budget_bytes);
  ASSIGN_OR_RETURN(r->reader_, BlockReader::open(dir, index.files, std::move(ranges), slot_bytes));
  ASSIGN_OR_RETURN(r->buffers_, ReadBuffers::allocate(slot_bytes, any_cuda));
  return r;
}

base::StatusOr<ReadStats> StateReader::read(bool* touched) {
  // Copies are sorted by file and offset and a window never starts before the previous one, so
  // `next`, the first copy that may still overlap a window, only moves forward.
  size_t next = 0;
  auto sink = [&](const ReadWindow& w) -> base::Status {
    const int64_t end = w.offset + w.size;
    auto before = [&w](const SliceCopy& c) {
      return c.file < w.file || (c.file == w.file && c.byte_offset + c.bytes <= w.offset);
    };
    while (next < dests_.size() && before(dests_[next].copy)) ++next;
    try {
      for (size_t i = next;
           i < dests_.size() && dests_[i].copy.file == w.file && dests_[i].copy.byte_offset < end;
           ++i) {
        Destination& d = dests_[i];
        const int64_t a = std::max(w.offset, d.copy.byte_offset);
        const int64_t b = std::min(end, d.copy.byte_offset + d.copy.bytes);
        if (a >= b) continue;
        *touched = true;
        d.put(a - d.copy.byte_offset, w.data + (a - w.offset), b - a);
      }
    } catch (const std::exception& e) {
      return base::Status::Internal(std::string("copying checkpoint bytes into the state: ") +
                                    e.what());
    }
    return base::Status::Ok();
  };
  return reader_->read(buffers_->view(), sink);
}

}  // namespace dstrain::runtime::checkpoint
