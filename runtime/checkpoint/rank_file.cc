#include "runtime/checkpoint/rank_file.h"

#include <cstdio>

#include "runtime/checkpoint/file_io.h"
#include "runtime/checkpoint/hdf5.h"
#include "runtime/checkpoint/index.h"

namespace dstrain::runtime::checkpoint {
namespace {

constexpr const char* kKinds[] = {"param", "exp_avg", "exp_avg_sq"};
constexpr size_t kDtypeChars = 8;
constexpr hsize_t kAlignThreshold = hsize_t{64} << 10;

hid_t file_type(const std::string& dtype) {
  return dtype == "fp32" ? H5T_IEEE_F32LE : H5T_STD_U16LE;
}

base::Status write_int64_attr(hid_t obj, const char* name, const std::vector<int64_t>& values,
                              bool scalar) {
  const hsize_t n = values.size();
  ASSIGN_OR_RETURN(
      HdfId space,
      HDF5_ID(scalar ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, &n, nullptr), H5Sclose));
  ASSIGN_OR_RETURN(HdfId attr, HDF5_ID(H5Acreate2(obj, name, H5T_STD_I64LE, space.get(),
                                                  H5P_DEFAULT, H5P_DEFAULT),
                                       H5Aclose));
  // An empty shape (a scalar tensor) has nothing to write.
  if (!values.empty()) HDF5_CHECK(H5Awrite(attr.get(), H5T_NATIVE_INT64, values.data()));
  return attr.close();
}

base::StatusOr<std::vector<int64_t>> read_int64_attr(hid_t obj, const char* name) {
  ASSIGN_OR_RETURN(HdfId attr, HDF5_ID(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose));
  ASSIGN_OR_RETURN(HdfId space, HDF5_ID(H5Aget_space(attr.get()), H5Sclose));
  const hssize_t n = H5Sget_simple_extent_npoints(space.get());
  HDF5_CHECK(n);
  std::vector<int64_t> values(static_cast<size_t>(n));
  if (n > 0) HDF5_CHECK(H5Aread(attr.get(), H5T_NATIVE_INT64, values.data()));
  return values;
}

base::StatusOr<HdfId> string_type() {
  ASSIGN_OR_RETURN(HdfId t, HDF5_ID(H5Tcopy(H5T_C_S1), H5Tclose));
  HDF5_CHECK(H5Tset_size(t.get(), kDtypeChars));
  HDF5_CHECK(H5Tset_strpad(t.get(), H5T_STR_NULLPAD));
  return t;
}

base::Status write_string_attr(hid_t obj, const char* name, const std::string& value) {
  ASSIGN_OR_RETURN(HdfId type, string_type());
  ASSIGN_OR_RETURN(HdfId space, HDF5_ID(H5Screate(H5S_SCALAR), H5Sclose));
  ASSIGN_OR_RETURN(
      HdfId attr,
      HDF5_ID(H5Acreate2(obj, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose));
  char buf[kDtypeChars] = {};
  value.copy(buf, kDtypeChars);
  HDF5_CHECK(H5Awrite(attr.get(), type.get(), buf));
  return attr.close();
}

base::StatusOr<std::string> read_string_attr(hid_t obj, const char* name) {
  ASSIGN_OR_RETURN(HdfId type, string_type());
  ASSIGN_OR_RETURN(HdfId attr, HDF5_ID(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose));
  char buf[kDtypeChars + 1] = {};
  HDF5_CHECK(H5Aread(attr.get(), type.get(), buf));
  return std::string(buf);
}

struct NameList {
  std::vector<std::string> names;
};

herr_t collect_name(hid_t, const char* name, const H5L_info_t*, void* out) {
  static_cast<NameList*>(out)->names.emplace_back(name);
  return 0;
}

base::StatusOr<DatasetSpec> read_dataset(hid_t group, const std::string& kind,
                                         const std::string& name) {
  DatasetSpec s;
  s.kind = kind;
  s.name = name;
  ASSIGN_OR_RETURN(HdfId ds, HDF5_ID(H5Dopen2(group, name.c_str(), H5P_DEFAULT), H5Dclose));
  ASSIGN_OR_RETURN(HdfId space, HDF5_ID(H5Dget_space(ds.get()), H5Sclose));
  const hssize_t n = H5Sget_simple_extent_npoints(space.get());
  HDF5_CHECK(n);
  s.numel = n;
  const haddr_t at = H5Dget_offset(ds.get());
  if (at == HADDR_UNDEF)
    return hdf5_error("H5Dget_offset (dataset not contiguous or unallocated)", __FILE__, __LINE__);
  s.byte_offset = static_cast<int64_t>(at);
  ASSIGN_OR_RETURN(std::vector<int64_t> offset, read_int64_attr(ds.get(), "offset"));
  if (offset.size() != 1)
    return base::Status::BadInput(dataset_path(kind, name) + ": bad offset attribute");
  s.offset = offset[0];
  ASSIGN_OR_RETURN(s.full_shape, read_int64_attr(ds.get(), "full_shape"));
  ASSIGN_OR_RETURN(s.dtype, read_string_attr(ds.get(), "dtype"));
  return s;
}

}  // namespace

std::string dataset_path(const std::string& kind, const std::string& name) {
  return "/" + kind + "/" + name;
}

std::string rank_file_name(int rank) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "rank-%05d.h5", rank);
  return buf;
}

base::Status create_rank_file(const std::string& path, std::vector<DatasetSpec>& specs) {
  hdf5_quiet();
  // Data of datasets of 64 KiB or more starts on a 4 KiB boundary, so it can be written with
  // direct I/O; smaller ones are not worth the padding.
  ASSIGN_OR_RETURN(HdfId fapl, HDF5_ID(H5Pcreate(H5P_FILE_ACCESS), H5Pclose));
  HDF5_CHECK(H5Pset_alignment(fapl.get(), kAlignThreshold, kDirectIoAlignment));
  ASSIGN_OR_RETURN(
      HdfId file,
      HDF5_ID(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()), H5Fclose));
  for (const char* kind : kKinds) {
    bool used = false;
    for (const DatasetSpec& s : specs) used = used || s.kind == kind;
    if (!used) continue;
    ASSIGN_OR_RETURN(
        HdfId g,
        HDF5_ID(H5Gcreate2(file.get(), kind, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose));
  }
  ASSIGN_OR_RETURN(HdfId dcpl, HDF5_ID(H5Pcreate(H5P_DATASET_CREATE), H5Pclose));
  HDF5_CHECK(H5Pset_layout(dcpl.get(), H5D_CONTIGUOUS));
  HDF5_CHECK(H5Pset_alloc_time(dcpl.get(), H5D_ALLOC_TIME_EARLY));
  HDF5_CHECK(H5Pset_fill_time(dcpl.get(), H5D_FILL_TIME_NEVER));
  for (DatasetSpec& s : specs) {
    if (dtype_bytes(s.dtype) == 0) return base::Status::Internal("unknown dtype " + s.dtype);
    const hsize_t n = static_cast<hsize_t>(s.numel);
    ASSIGN_OR_RETURN(HdfId space, HDF5_ID(H5Screate_simple(1, &n, nullptr), H5Sclose));
    const std::string ds_path = dataset_path(s.kind, s.name);
    ASSIGN_OR_RETURN(
        HdfId ds, HDF5_ID(H5Dcreate2(file.get(), ds_path.c_str(), file_type(s.dtype), space.get(),
                                     H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
                          H5Dclose));
    RETURN_IF_ERROR(write_int64_attr(ds.get(), "offset", {s.offset}, /*scalar=*/true));
    RETURN_IF_ERROR(write_int64_attr(ds.get(), "full_shape", s.full_shape, /*scalar=*/false));
    RETURN_IF_ERROR(write_string_attr(ds.get(), "dtype", s.dtype));
    const haddr_t at = H5Dget_offset(ds.get());
    if (at == HADDR_UNDEF) return hdf5_error("H5Dget_offset", __FILE__, __LINE__);
    s.byte_offset = static_cast<int64_t>(at);
  }
  return file.close();
}

base::StatusOr<std::vector<DatasetSpec>> read_rank_file(const std::string& path) {
  hdf5_quiet();
  ASSIGN_OR_RETURN(HdfId file,
                   HDF5_ID(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose));
  std::vector<DatasetSpec> out;
  for (const char* kind : kKinds) {
    const htri_t exists = H5Lexists(file.get(), kind, H5P_DEFAULT);
    HDF5_CHECK(exists);
    if (exists == 0) continue;
    ASSIGN_OR_RETURN(HdfId g, HDF5_ID(H5Gopen2(file.get(), kind, H5P_DEFAULT), H5Gclose));
    NameList list;
    HDF5_CHECK(H5Literate(g.get(), H5_INDEX_NAME, H5_ITER_INC, nullptr, collect_name, &list));
    for (const std::string& name : list.names) {
      ASSIGN_OR_RETURN(DatasetSpec s, read_dataset(g.get(), kind, name));
      out.push_back(std::move(s));
    }
  }
  return out;
}

}  // namespace dstrain::runtime::checkpoint
