// The build without the CUDA runtime: host memory is ordinary aligned memory.
#include "offload/pinned_host_allocator.h"

namespace dstrain::offload {

base::StatusOr<std::unique_ptr<HostAllocator>> make_pinned_host_allocator() {
  return base::Status::Internal("pinned host memory: dstrain was built without the CUDA runtime");
}

base::StatusOr<std::unique_ptr<HostAllocator>> make_host_allocator(bool pinned) {
  if (pinned) return make_pinned_host_allocator();
  return make_aligned_host_allocator();
}

}  // namespace dstrain::offload
