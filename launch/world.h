#pragma once
// The process group: MPI initialised for a communication thread (MPI_THREAD_SERIALIZED), this
// process's rank, and its place on the node. Owns MPI: the destructor finalises it, so everything
// holding an MPI communicator must be destroyed first.
#include <mpi.h>

#include <memory>
#include <string>

#include "base/status.h"

namespace dstrain::launch {

class World {
 public:
  static base::StatusOr<std::unique_ptr<World>> init(int* argc, char*** argv);
  ~World();
  World(const World&) = delete;
  World& operator=(const World&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  int local_rank() const { return local_rank_; }  // from MPI_Comm_split_type(SHARED)
  int local_size() const { return local_size_; }
  MPI_Comm comm() const { return MPI_COMM_WORLD; }
  // Launcher variables that disagree with MPI's view of the node (empty when consistent).
  const std::string& launcher_warning() const { return launcher_warning_; }
  // MPI library version line, for the start-of-run log.
  std::string mpi_version() const;

 private:
  World() = default;
  int rank_ = 0;
  int size_ = 1;
  int local_rank_ = 0;
  int local_size_ = 1;
  std::string launcher_warning_;
};

}  // namespace dstrain::launch
