#include "runtime/device_memory.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>

namespace dstrain::runtime {

int64_t device_memory_peak_bytes(const at::Device& device) {
  if (!device.is_cuda()) return 0;
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
  return stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)]
      .peak;
}

AllocatorCounts device_allocator_counts(const at::Device& device) {
  if (!device.is_cuda()) return {};
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
  return {stats.num_device_alloc, stats.num_device_free, stats.num_alloc_retries};
}

int64_t device_memory_total_bytes(const at::Device& device) {
  if (!device.is_cuda()) return 0;
  return static_cast<int64_t>(at::cuda::getDeviceProperties(device.index())->totalGlobalMem);
}

}  // namespace dstrain::runtime
