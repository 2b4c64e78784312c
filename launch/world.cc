#include "launch/world.h"

#include <cstdlib>

#include "sharding/mpi_communicator.h"

namespace dstrain::launch {
namespace {

// Compares a launcher's local-rank variable with MPI's answer; returns a warning or "".
std::string check_env(const char* var, int local_rank) {
  const char* v = std::getenv(var);
  if (v == nullptr || std::atoi(v) == local_rank) return "";
  return std::string(var) + "=" + v + " but MPI places this rank at local rank " +
         std::to_string(local_rank) + "; using MPI's value";
}

}  // namespace

base::StatusOr<std::unique_ptr<World>> World::init(int* argc, char*** argv) {
  int provided = 0;
  RETURN_IF_ERROR(MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided)));
  std::unique_ptr<World> w(new World());
  if (provided < MPI_THREAD_SERIALIZED) {
    return base::Status::Internal("MPI provides thread level " + std::to_string(provided) +
                                  ", dstrain needs MPI_THREAD_SERIALIZED");
  }
  // Errors come back as codes, so they become Status values instead of aborting the job.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  RETURN_IF_ERROR(MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &w->rank_)));
  RETURN_IF_ERROR(MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &w->size_)));
  MPI_Comm node;
  RETURN_IF_ERROR(MPI_CHECK(
      MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, w->rank_, MPI_INFO_NULL, &node)));
  MPI_Comm_rank(node, &w->local_rank_);
  MPI_Comm_size(node, &w->local_size_);
  MPI_Comm_free(&node);
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"}) {
    // SLURM_LOCALID names the task only when srun started each rank itself.
    if (std::string(var) == "SLURM_LOCALID" && std::getenv("OMPI_COMM_WORLD_RANK") != nullptr)
      continue;
    std::string warning = check_env(var, w->local_rank_);
    if (!warning.empty()) w->launcher_warning_ = warning;
  }
  return w;
}

World::~World() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

std::string World::mpi_version() const {
  char text[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(text, &len);
  std::string s(text, len);
  const auto nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl);
}

}  // namespace dstrain::launch
