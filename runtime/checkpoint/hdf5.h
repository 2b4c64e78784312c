#pragma once
// HDF5 C API glue: one check macro that turns a negative return into a Status carrying file, line
// and the library's error stack, and a move-only owner for every hid_t.
#include <hdf5.h>

#include <string>
#include <utility>

#include "base/status.h"

namespace dstrain::runtime::checkpoint {

using HdfCloseFn = herr_t (*)(hid_t);

// Owns one HDF5 identifier and closes it with the function that matches its kind
// (H5Fclose, H5Dclose, H5Sclose, H5Pclose, H5Gclose, H5Aclose, H5Tclose).
class HdfId {
 public:
  HdfId() = default;
  HdfId(hid_t id, HdfCloseFn close) : id_(id), close_(close) {}
  ~HdfId() { reset(); }
  HdfId(const HdfId&) = delete;
  HdfId& operator=(const HdfId&) = delete;
  HdfId(HdfId&& o) noexcept : id_(std::exchange(o.id_, -1)), close_(o.close_) {}
  HdfId& operator=(HdfId&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = std::exchange(o.id_, -1);
      close_ = o.close_;
    }
    return *this;
  }
  hid_t get() const { return id_; }
  // Closes now and reports the library's verdict (a file's close flushes its metadata).
  base::Status close();

 private:
  void reset() {
    if (id_ >= 0 && close_ != nullptr) close_(id_);
    id_ = -1;
  }
  hid_t id_ = -1;
  HdfCloseFn close_ = nullptr;
};

// The library's error stack as one line (innermost first), then cleared.
std::string hdf5_error_text();
base::Status hdf5_error(const char* call, const char* file, int line);
base::StatusOr<HdfId> hdf5_id(hid_t id, HdfCloseFn close, const char* call, const char* file,
                              int line);
// Stops the library from printing its error stack to stderr; errors travel as Status instead.
void hdf5_quiet();

}  // namespace dstrain::runtime::checkpoint

// For calls returning herr_t (or any value that is negative on failure).
#define HDF5_CHECK(expr)                                                                          \
  do {                                                                                            \
    if ((expr) < 0) return ::dstrain::runtime::checkpoint::hdf5_error(#expr, __FILE__, __LINE__); \
  } while (0)

// For calls returning an identifier: `ASSIGN_OR_RETURN(HdfId f, HDF5_ID(H5Fopen(...), H5Fclose));`
#define HDF5_ID(expr, close_fn) \
  ::dstrain::runtime::checkpoint::hdf5_id((expr), (close_fn), #expr, __FILE__, __LINE__)
