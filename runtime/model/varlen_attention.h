#pragma once
// Causal attention over packed documents as variable-length flash attention: the B * T slots of
// a packed batch laid end to end, each document attending only to itself, with no [B, 1, T, T]
// mask in memory. ATen's flash kernels serve CUDA tensors in bf16 or fp16 only; everything else
// keeps the masked path (layers.cc), which is also the reference this one is tested against.
#include <ATen/ATen.h>

#include <cstdint>

namespace dstrain::runtime {

// Whether varlen_attention serves activations of this device and dtype with heads of this size:
// CUDA, bf16 or fp16, and a head_dim flash attention takes (a multiple of 8, at most 256). The
// trainer asks before a batch is made, to leave out the dense mask nothing would read.
bool varlen_attention_serves(const at::Device& device, at::ScalarType dtype, int64_t head_dim);

// The same for queries q [..., head_dim] of a batch, which must also carry boundaries.
bool varlen_attention_applies(const at::Tensor& q, const at::Tensor& cu_seqlens);

// q [N, heads, head_dim], k and v [N, kv_heads, head_dim] (heads a multiple of kv_heads: grouped
// queries are served by the kernel itself, no repeat), N the flattened slots; cu_seqlens int32
// [num_docs + 1] over them, max_seqlen the longest document. Causal within each document; with
// sliding_window > 0 a query also sees only the last sliding_window keys (itself included), as
// sliding_window_mask. Returns [N, heads, head_dim]. Differentiable in q, k and v.
at::Tensor varlen_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& cu_seqlens, int64_t max_seqlen, double scale,
                            int64_t sliding_window);

}  // namespace dstrain::runtime
