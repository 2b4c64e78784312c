#include "runtime/checkpoint/hdf5.h"

namespace dstrain::runtime::checkpoint {
namespace {

herr_t append_error(unsigned n, const H5E_error2_t* e, void* out) {
  auto* text = static_cast<std::string*>(out);
  if (n > 0) *text += "; ";
  *text += std::string(e->func_name ? e->func_name : "?") + ": " + (e->desc ? e->desc : "");
  return 0;
}

}  // namespace

void hdf5_quiet() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

std::string hdf5_error_text() {
  std::string text;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, append_error, &text);
  H5Eclear2(H5E_DEFAULT);
  return text.empty() ? "no HDF5 error recorded" : text;
}

base::Status hdf5_error(const char* call, const char* file, int line) {
  return base::Status::Internal(std::string(file) + ":" + std::to_string(line) + ": " + call +
                                " failed: " + hdf5_error_text());
}

base::StatusOr<HdfId> hdf5_id(hid_t id, HdfCloseFn close, const char* call, const char* file,
                              int line) {
  if (id < 0) return hdf5_error(call, file, line);
  return HdfId(id, close);
}

base::Status HdfId::close() {
  if (id_ < 0) return base::Status::Ok();
  const herr_t rc = close_(id_);
  id_ = -1;
  HDF5_CHECK(rc);
  return base::Status::Ok();
}

}  // namespace dstrain::runtime::checkpoint
