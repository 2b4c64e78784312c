#include "sharding/gathered_storage.h"

#include <c10/core/StorageImpl.h>

namespace dstrain::sharding {

void release_storage(const at::Tensor& t) {
  c10::StorageImpl* impl = t.storage().unsafeGetStorageImpl();
  impl->set_data_ptr_noswap(c10::DataPtr(nullptr, t.device()));
  impl->set_nbytes(0);
}

void allocate_storage(const at::Tensor& t, size_t nbytes) {
  c10::StorageImpl* impl = t.storage().unsafeGetStorageImpl();
  if (impl->nbytes() == nbytes && impl->data_ptr().get() != nullptr) return;
  c10::Allocator* allocator = impl->allocator();
  if (allocator == nullptr) allocator = c10::GetAllocator(t.device().type());
  impl->set_data_ptr_noswap(allocator->allocate(nbytes));
  impl->set_nbytes(nbytes);
}

size_t storage_bytes(const at::Tensor& t) {
  if (!t.defined() || !t.has_storage()) return 0;
  return t.storage().unsafeGetStorageImpl()->data_ptr().get() == nullptr ? 0 : t.storage().nbytes();
}

}  // namespace dstrain::sharding
