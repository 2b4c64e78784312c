#pragma once
// Memory behind a gathered parameter buffer that comes and goes while the tensor stays.
// Under ZeRO stage 3 a unit's full parameters exist only around its forward and its backward, but
// the autograd graph saved by the forward keeps referring to the buffer's StorageImpl. So the
// engine keeps one permanent tensor per buffer, frees the memory behind its storage after use and
// gives the same storage fresh memory before the next use (as FSDP1's `storage.resize_(0)`).
// New contents are written through raw pointers (the communicator's all-gather), never through an
// ATen in-place op, which would bump the version counter that saved tensors check in backward.
#include <ATen/ATen.h>

#include <cstddef>

namespace dstrain::sharding {

// Frees the memory behind `t`'s storage, keeping the storage object, its views and every saved
// reference to it. Reading `t` afterwards is an error until allocate_storage.
void release_storage(const at::Tensor& t);

// Gives `t`'s storage new memory of `nbytes` from the storage's own allocator (the caching
// allocator on CUDA); the contents are undefined until written. No-op when already allocated.
void allocate_storage(const at::Tensor& t, size_t nbytes);

// Bytes of memory currently behind `t`'s storage.
size_t storage_bytes(const at::Tensor& t);

}  // namespace dstrain::sharding
