#pragma once
// Entry points to the NCCL communicator that exist in every build, so launch code needs no
// #ifdef: with NCCL and CUDA found, sharding/nccl_communicator.cc defines them (and the target
// carries DSTRAIN_WITH_NCCL=1); without, sharding/nccl_unavailable.cc returns errors.
#include <mpi.h>

#include <memory>
#include <string>

#include "base/status.h"
#include "sharding/comm_trace.h"
#include "sharding/communicator.h"

namespace dstrain::sharding {

// A Communicator for CUDA tensors on `device` over the ranks of `comm` (collective over `comm`;
// NCCL ranks equal the ranks of `comm`). See NcclCommunicator for the stream semantics and the
// watchdog: an operation unfinished after `timeout_s` seconds (0: never) aborts the communicator.
base::StatusOr<std::unique_ptr<Communicator>> make_nccl_communicator(MPI_Comm comm, int device,
                                                                     double timeout_s);
// The same with diagnostics (options.trace, options.group; sharding/comm_trace.h).
base::StatusOr<std::unique_ptr<Communicator>> make_nccl_communicator(MPI_Comm comm, int device,
                                                                     CommOptions options);

// Collective over the ranks of `parent`, which make_nccl_communicator made: the ranks passing
// the same `color` form a new NCCL communicator, ranked by `key` (ncclCommSplit; see
// NcclCommunicator::split). `parent` stays usable.
base::StatusOr<std::unique_ptr<Communicator>> split_nccl_communicator(Communicator& parent,
                                                                      int color, int key,
                                                                      CommOptions options);

// The loaded NCCL library's version as "major.minor.patch", for the start-up log.
base::StatusOr<std::string> nccl_version_string();

}  // namespace dstrain::sharding
