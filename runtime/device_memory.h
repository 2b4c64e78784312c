#pragma once
// Peak device memory of this process, as the CUDA caching allocator counts it (0 on the CPU).
#include <ATen/ATen.h>

#include <cstdint>

namespace dstrain::runtime {

int64_t device_memory_peak_bytes(const at::Device& device);
// How often the CUDA caching allocator went to the driver since the process began: device
// allocations (cudaMalloc) and frees, and retries (an allocation that failed, freed the cache and
// tried again). A steady step makes none: every block comes from the cache. Zeros on the CPU.
struct AllocatorCounts {
  int64_t device_allocs = 0;
  int64_t device_frees = 0;
  int64_t retries = 0;
};
AllocatorCounts device_allocator_counts(const at::Device& device);
// Total memory of the device; 0 on the CPU.
int64_t device_memory_total_bytes(const at::Device& device);

}  // namespace dstrain::runtime
