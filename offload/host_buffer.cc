#include "offload/host_buffer.h"

#include <atomic>
#include <cstdlib>
#include <utility>

namespace dstrain::offload {

HostBuffer::~HostBuffer() { release(); }

HostBuffer::HostBuffer(HostBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      owner_(std::exchange(other.owner_, nullptr)) {}

HostBuffer& HostBuffer::operator=(HostBuffer&& other) noexcept {
  if (this != &other) {
    release();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    owner_ = std::exchange(other.owner_, nullptr);
  }
  return *this;
}

void HostBuffer::release() {
  if (data_ != nullptr && owner_ != nullptr) owner_->free(data_, size_);
  data_ = nullptr;
  size_ = 0;
}

namespace {

class AlignedHostAllocator final : public HostAllocator {
 public:
  base::StatusOr<HostBuffer> allocate(size_t size) override {
    void* p = nullptr;
    // posix_memalign rejects size 0 on some libcs; hand out one aligned block instead.
    if (posix_memalign(&p, kHostAlignment, size == 0 ? kHostAlignment : size) != 0) {
      return base::Status::IOError("host allocator: cannot allocate " + std::to_string(size) +
                                   " bytes");
    }
    in_use_ += size;
    return HostBuffer(p, size, this);
  }
  size_t bytes_in_use() const override { return in_use_.load(); }

 protected:
  void free(void* data, size_t size) override {
    std::free(data);
    in_use_ -= size;
  }

 private:
  std::atomic<size_t> in_use_{0};
};

}  // namespace

std::unique_ptr<HostAllocator> make_aligned_host_allocator() {
  return std::make_unique<AlignedHostAllocator>();
}

}  // namespace dstrain::offload
