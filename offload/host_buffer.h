#pragma once
// Host memory for offload tiers and direct I/O. Buffers come from a HostAllocator: page-locked
// memory when a GPU is present (so copies to and from the device are asynchronous DMA), ordinary
// aligned memory on CPU-only machines, so every offload path also runs in CI. Alignment is at
// least 4096 bytes, which O_DIRECT needs.
#include <cstddef>
#include <memory>

#include "base/status.h"

namespace dstrain::offload {

inline constexpr size_t kHostAlignment = 4096;

class HostAllocator;

// A move-only block of host memory, returned to its allocator on destruction.
class HostBuffer {
 public:
  HostBuffer() = default;
  HostBuffer(void* data, size_t size, HostAllocator* owner)
      : data_(data), size_(size), owner_(owner) {}
  ~HostBuffer();
  HostBuffer(HostBuffer&& other) noexcept;
  HostBuffer& operator=(HostBuffer&& other) noexcept;
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;

  void* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  void release();
  void* data_ = nullptr;
  size_t size_ = 0;
  HostAllocator* owner_ = nullptr;
};

class HostAllocator {
 public:
  virtual ~HostAllocator() = default;
  // `size` bytes aligned to kHostAlignment; kIOError naming the size when memory runs out.
  virtual base::StatusOr<HostBuffer> allocate(size_t size) = 0;
  // Bytes currently handed out by this allocator.
  virtual size_t bytes_in_use() const = 0;

 protected:
  friend class HostBuffer;
  virtual void free(void* data, size_t size) = 0;
};

// Ordinary aligned memory (posix_memalign); the allocator of CPU-only machines.
std::unique_ptr<HostAllocator> make_aligned_host_allocator();

}  // namespace dstrain::offload
