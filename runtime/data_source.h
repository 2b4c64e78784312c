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
// Checks the file's vocabulary against the model's (kBadInput naming the file). With
// data.eval_fraction (and no data.eval_path), only the documents it does not hold out.
base::StatusOr<Dataset> open_train_data(const base::DataConfig& data,
                                        const base::TrainConfig& train,
                                        const base::ModelConfig& model);
// The evaluation dataset: data.eval_path, else the share of data.path that data.eval_fraction
// holds out, or nullopt when neither is configured.
base::StatusOr<std::optional<Dataset>> open_eval_data(const base::DataConfig& data,
                                                      const base::TrainConfig& train,
                                                      const base::ModelConfig& model);

// Input and target ids of a batch as [rows, seq_len] int64 tensors on `device`.
struct BatchTensors {
  at::Tensor input_ids;
  at::Tensor target_ids;
  at::Tensor position_ids;
  at::Tensor attn_mask;  // packed batches with dense_mask: block-diagonal causal [B, 1, T, T] bool
  // Packed batches only: the same documents as variable-length attention's boundaries over the
  // B * T flattened slots (int32 [num_docs + 1] on `device`) and the longest one.
  at::Tensor cu_seqlens;
  int64_t max_seqlen = 0;
  int64_t num_targets = 0;
};

// For packed batches: `segments` [B, T] int64 -> [B, 1, T, T] bool, true where query slot i may
// attend key slot j (same segment, j <= i).
at::Tensor packed_attention_mask(const at::Tensor& segments);
// `dense_mask` false leaves attn_mask undefined for packed batches (the boundaries alone serve
// variable-length attention; see varlen_attention_serves).
BatchTensors to_tensors(const Batch& batch, at::Device device, bool dense_mask = true);

}  // namespace dstrain::runtime
