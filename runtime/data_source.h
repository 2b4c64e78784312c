#pragma once
// Opens the training and evaluation data a config names and turns samples into tensors.
#include <ATen/ATen.h>

#include <memory>
#include <optional>

#include "base/config.h"
#include "base/status.h"
#include "runtime/data/dataset.h"

namespace dstrain::runtime {

// The training dataset: data.path, or the built-in demo corpus when data.path is empty.
// Checks the file's vocabulary against the model's (kBadInput naming the file).
base::StatusOr<Dataset> open_train_data(const base::DataConfig& data, const base::TrainConfig& train,
                                        const base::ModelConfig& model);
// The evaluation dataset (data.eval_path), or nullopt when none is configured.
base::StatusOr<std::optional<Dataset>> open_eval_data(const base::DataConfig& data,
                                                      const base::TrainConfig& train,
                                                      const base::ModelConfig& model);

// Input and target ids of a batch as [rows, seq_len] int64 tensors on `device`.
struct BatchTensors {
  at::Tensor input_ids;
  at::Tensor target_ids;
  at::Tensor position_ids;
  int64_t num_targets = 0;
};
BatchTensors to_tensors(const Batch& batch, at::Device device);

}  // namespace dstrain::runtime
