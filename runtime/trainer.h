#pragma once
// The training loop: data -> engine -> metrics, one optimizer step at a time.
#include <ATen/ATen.h>

#include <memory>
#include <optional>

#include "base/config.h"
#include "base/status.h"
#include "runtime/data/dataset.h"
#include "runtime/data/sampler.h"
#include "runtime/metrics.h"
#include "sharding/engine.h"

namespace dstrain::runtime {

struct TrainSummary {
  int64_t steps = 0;
  double first_loss = 0.0;
  double last_loss = 0.0;
  std::optional<double> last_eval_loss;
  int64_t skipped_steps = 0;
};

class Trainer {
 public:
  // Builds the model, opens the data and initialises the engine on `device`.
  static base::StatusOr<std::unique_ptr<Trainer>> create(const base::Config& cfg,
                                                         sharding::Communicator& comm,
                                                         at::Device device);
  base::StatusOr<TrainSummary> run();
  sharding::Engine& engine() { return *engine_; }

 private:
  Trainer(const base::Config& cfg, sharding::Communicator& comm, at::Device device, Dataset train,
          std::optional<Dataset> eval, Sampler sampler)
      : cfg_(cfg), comm_(comm), device_(device), train_(std::move(train)),
        eval_(std::move(eval)), sampler_(std::move(sampler)) {}
  base::StatusOr<sharding::MicroBatch> micro_batch(const Dataset& ds, const std::vector<int64_t>& ids,
                                                   int64_t* num_targets) const;
  base::StatusOr<double> evaluate();
  bool is_root() const { return comm_.rank() == 0; }

  base::Config cfg_;
  sharding::Communicator& comm_;
  at::Device device_;
  at::ScalarType compute_dtype_ = at::kFloat;
  Dataset train_;
  std::optional<Dataset> eval_;
  Sampler sampler_;
  std::unique_ptr<sharding::Engine> engine_;
  std::unique_ptr<MetricsWriter> metrics_;  // rank 0 only
};

}  // namespace dstrain::runtime
