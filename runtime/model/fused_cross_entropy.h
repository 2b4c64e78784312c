#pragma once
// The language-model head and its loss in one pass over token chunks: logits for a chunk of
// tokens exist only while that chunk's loss and gradients are computed, so the [tokens, vocab]
// logits (and their fp32 copy and gradient) are never materialised for the whole sequence.
#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

#include "base/grad_sink.h"
#include "runtime/kernels/fused_ops.h"

namespace dstrain::runtime {

// The summed cross-entropy of fp32 logits [rows, vocab] against targets [rows] (-100: ignored)
// and, when `grad_dtype` is given, d sum / d logits in that dtype, through ATen ops: the path
// off CUDA, and the reference of kernels::cross_entropy_rows. The logits are overwritten.
kernels::CrossEntropyRows cross_entropy_rows_aten(at::Tensor logits, const at::Tensor& targets,
                                                  std::optional<at::ScalarType> grad_dtype);

// Tokens per chunk such that one chunk's fp32 logits take about `budget_bytes`.
int64_t cross_entropy_chunk_tokens(int64_t vocab, int64_t budget_bytes = int64_t{256} << 20);

// sum over tokens t with targets[t] != -100 of cross_entropy(hidden[t] @ weight^T, targets[t]),
// in fp32, as a 0-dim tensor. hidden [..., H] in the compute dtype, weight [V, H], targets [...]
// int64. Differentiable in `hidden` and `weight`: the gradients are computed chunk by chunk
// during the forward (the backward of a scalar loss only scales them), and only for the inputs
// that require grad (a frozen LM head costs no weight-gradient matmul). With `weight_sink`
// defined, the weight (which then must not require grad) has its fp32 gradient written there in
// backward instead.
at::Tensor fused_linear_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight,
                                      const at::Tensor& targets, int64_t chunk_tokens,
                                      const base::GradSink& weight_sink = {});

}  // namespace dstrain::runtime
