#pragma once
// Tensors over memory from an offload::HostAllocator (page-locked when a GPU is present), so the
// engine's host-resident state is real pinned memory of exactly the requested size.
#include <ATen/ATen.h>

#include <memory>

#include "base/status.h"
#include "offload/host_buffer.h"

namespace dstrain::sharding {

// A contiguous 1-D tensor of `numel` elements of `dtype` on the CPU, zero-filled. The tensor's
// storage owns the buffer (and shares ownership of the allocator), so views stay valid as long
// as any of them lives.
base::StatusOr<at::Tensor> host_tensor(const std::shared_ptr<offload::HostAllocator>& allocator,
                                       int64_t numel, at::ScalarType dtype);

}  // namespace dstrain::sharding
