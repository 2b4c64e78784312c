#pragma once
// Peak device memory of this process, as the CUDA caching allocator counts it (0 on the CPU).
#include <ATen/ATen.h>

#include <cstdint>

namespace dstrain::runtime {

int64_t device_memory_peak_bytes(const at::Device& device);
// Total memory of the device; 0 on the CPU.
int64_t device_memory_total_bytes(const at::Device& device);

}  // namespace dstrain::runtime
