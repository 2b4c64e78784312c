#pragma once
// The training loop: data -> engine -> metrics, one optimizer step at a time.
#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <optional>

#include "base/config.h"
#include "base/status.h"
#include "runtime/checkpoint/checkpointer.h"
#include "runtime/checkpoint/file_io.h"
#include "runtime/data/dataset.h"
#include "runtime/data/sampler.h"
#include "runtime/metrics.h"
#include "runtime/progress.h"
#include "sharding/engine.h"

namespace dstrain::runtime {

// What a run needs beyond the config: how to resume and what a checkpoint records about it.
struct RunOptions {
  std::string resume = "never";  // auto | never | a checkpoint directory (--resume)
  std::string config_toml;       // the config as TOML, stored in each checkpoint's index
  std::string dstrain_version;
  checkpoint::CheckpointIo* io = nullptr;  // checkpoint writes; nullptr: POSIX files
  // The engine's collectives (NCCL for CUDA tensors); nullptr: the host communicator, which
  // always carries the trainer's and the checkpointer's small host-side reductions.
  sharding::Communicator* engine_comm = nullptr;
  // zero.shard_group = "node": engine_comm spans this node's ranks and this one the ranks holding
  // the same shard on the other nodes (sharding::Engine::create). nullptr: no replicas.
  sharding::Communicator* engine_replicas = nullptr;
  // Polled once per step on every rank; when it holds on any rank, the ranks commit a checkpoint
  // after that step and run() returns Status::Preempted (exit 75). Empty: never.
  std::function<bool()> stop_requested;
};

struct TrainSummary {
  int64_t start_step = 0;  // optimizer steps already done by the checkpoint resumed from
  int64_t steps = 0;
  double first_loss = 0.0;
  double last_loss = 0.0;
  std::optional<double> last_eval_loss;
  int64_t skipped_steps = 0;
  std::optional<std::string> resumed_from;
  std::optional<std::string> last_checkpoint;
};

class Trainer {
 public:
  // Builds the model, opens the data and initialises the engine on `device`.
  static base::StatusOr<std::unique_ptr<Trainer>> create(const base::Config& cfg,
                                                         sharding::Communicator& comm,
                                                         at::Device device,
                                                         const RunOptions& options = {});
  // Resumes as options.resume says, then trains up to train.steps, checkpointing every
  // checkpoint.every steps and at the end.
  base::StatusOr<TrainSummary> run();
  sharding::Engine& engine() { return *engine_; }

 private:
  Trainer(const base::Config& cfg, sharding::Communicator& comm, at::Device device, Dataset train,
          std::optional<Dataset> eval, Sampler sampler)
      : cfg_(cfg),
        comm_(comm),
        device_(device),
        train_(std::move(train)),
        eval_(std::move(eval)),
        sampler_(std::move(sampler)) {}
  // `global_indices` (training only) key each row's randomness; nullptr for evaluation.
  base::StatusOr<sharding::MicroBatch> micro_batch(const Dataset& ds,
                                                   const std::vector<int64_t>& ids,
                                                   const std::vector<int64_t>* global_indices,
                                                   int64_t* num_targets) const;
  base::StatusOr<double> evaluate();
  base::Status save_checkpoint(int64_t step, Progress& progress, TrainSummary& summary);
  // After an agreed stop at `step`: commits a checkpoint there and returns Status::Preempted.
  base::Status preempt(int64_t step, bool saved_at_step, Progress& progress, TrainSummary& summary);
  bool is_root() const { return comm_.rank() == 0; }

  base::Config cfg_;
  sharding::Communicator& comm_;
  sharding::Communicator* engine_comm_ = nullptr;  // the engine's collectives (comm_ on the CPU)
  at::Device device_;
  at::ScalarType compute_dtype_ = at::kFloat;
  Dataset train_;
  std::optional<Dataset> eval_;
  Sampler sampler_;
  std::unique_ptr<sharding::Engine> engine_;
  std::unique_ptr<MetricsWriter> metrics_;  // rank 0 only
  std::string resume_ = "never";
  std::function<bool()> stop_requested_;
  // Test-only, DSTRAIN_TEST_STOP_AT=RANK:STEP: that rank stops itself (SIGSTOP) at the start of
  // that step, once the step's host-side agreement is done and before its first engine
  // collective, so the other ranks wait in a collective for a stopped peer whose GPU is idle.
  int test_stop_rank_ = -1;
  int64_t test_stop_step_ = -1;
  std::unique_ptr<checkpoint::CheckpointIo> posix_io_;
  std::unique_ptr<checkpoint::Checkpointer> checkpointer_;
};

}  // namespace dstrain::runtime
