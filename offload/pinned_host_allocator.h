#pragma once
// Page-locked host memory (cudaHostAlloc), so copies between it and a GPU are asynchronous DMA at
// full PCIe speed. Built only when the CUDA runtime is found (offload/CMakeLists.txt picks
// pinned_host_allocator.cc or pinned_unavailable.cc). Unlike LibTorch's caching host allocator,
// which rounds every request up to a power of two, this hands out exactly what is asked (rounded
// to kHostAlignment), which matters when the optimizer state of a 12B model lives on the host.
#include <memory>

#include "base/status.h"
#include "offload/host_buffer.h"

namespace dstrain::offload {

// kInternal naming the CUDA error when no GPU runtime is usable, or in a build without CUDA.
base::StatusOr<std::unique_ptr<HostAllocator>> make_pinned_host_allocator();

// Page-locked when `pinned` (a GPU is the device), ordinary aligned memory otherwise.
base::StatusOr<std::unique_ptr<HostAllocator>> make_host_allocator(bool pinned);

}  // namespace dstrain::offload
