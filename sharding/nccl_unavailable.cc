// Built instead of nccl_communicator.cc when CMake finds no NCCL or no CUDA runtime.
#include "sharding/nccl_factory.h"

namespace dstrain::sharding {

namespace {
base::Status unavailable() {
  return base::Status::InvalidArgument(
      "this dstrain was built without NCCL (CMake found no nccl.h/libnccl or no CUDA runtime; "
      "set NCCL_ROOT and reconfigure)");
}
}  // namespace

base::StatusOr<std::unique_ptr<Communicator>> make_nccl_communicator(MPI_Comm, int, double) {
  return unavailable();
}

base::StatusOr<std::unique_ptr<Communicator>> make_nccl_communicator(MPI_Comm, int, CommOptions) {
  return unavailable();
}

base::StatusOr<std::unique_ptr<Communicator>> split_nccl_communicator(Communicator&, int, int,
                                                                      CommOptions) {
  return unavailable();
}

base::StatusOr<std::string> nccl_version_string() { return unavailable(); }

}  // namespace dstrain::sharding
