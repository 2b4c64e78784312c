#include "offload/pinned_host_allocator.h"

#include <cuda_runtime_api.h>

#include <atomic>
#include <string>

namespace dstrain::offload {
namespace {

class PinnedHostAllocator final : public HostAllocator {
 public:
  base::StatusOr<HostBuffer> allocate(size_t size) override {
    const size_t rounded = (size + kHostAlignment - 1) / kHostAlignment * kHostAlignment;
    void* p = nullptr;
    // Portable: usable from every device's streams. cudaHostAlloc returns page-aligned memory.
    const cudaError_t rc =
        cudaHostAlloc(&p, rounded == 0 ? kHostAlignment : rounded, cudaHostAllocPortable);
    if (rc != cudaSuccess) {
      return base::Status::IOError("pinned host allocator: cudaHostAlloc of " +
                                   std::to_string(size) +
                                   " bytes failed: " + cudaGetErrorString(rc));
    }
    in_use_ += size;
    return HostBuffer(p, size, this);
  }
  size_t bytes_in_use() const override { return in_use_.load(); }

 protected:
  void free(void* data, size_t size) override {
    (void)cudaFreeHost(data);  // nothing to do about a failure while freeing
    in_use_ -= size;
  }

 private:
  std::atomic<size_t> in_use_{0};
};

}  // namespace

base::StatusOr<std::unique_ptr<HostAllocator>> make_pinned_host_allocator() {
  int devices = 0;
  const cudaError_t rc = cudaGetDeviceCount(&devices);
  if (rc != cudaSuccess || devices == 0) {
    return base::Status::Internal(std::string("pinned host memory needs a GPU: ") +
                                  (rc != cudaSuccess ? cudaGetErrorString(rc) : "no device"));
  }
  return std::unique_ptr<HostAllocator>(std::make_unique<PinnedHostAllocator>());
}

base::StatusOr<std::unique_ptr<HostAllocator>> make_host_allocator(bool pinned) {
  if (pinned) return make_pinned_host_allocator();
  return make_aligned_host_allocator();
}

}  // namespace dstrain::offload
