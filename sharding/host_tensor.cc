#include "sharding/host_tensor.h"

#include <cstring>

namespace dstrain::sharding {

base::StatusOr<at::Tensor> host_tensor(const std::shared_ptr<offload::HostAllocator>& allocator,
                                       int64_t numel, at::ScalarType dtype) {
  const size_t bytes = static_cast<size_t>(numel) * c10::elementSize(dtype);
  ASSIGN_OR_RETURN(offload::HostBuffer buffer, allocator->allocate(bytes));
  std::memset(buffer.data(), 0, bytes);
  // The deleter owns the buffer and keeps the allocator alive until the last view is gone.
  auto* held = new offload::HostBuffer(std::move(buffer));
  void* data = held->data();
  std::shared_ptr<offload::HostAllocator> keep = allocator;
  return at::from_blob(
      data, {numel}, [held, keep](void*) { delete held; },
      at::TensorOptions().dtype(dtype).device(at::kCPU));
}

}  // namespace dstrain::sharding
