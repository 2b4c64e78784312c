#include "sharding/activation_bytes.h"

#include <algorithm>

namespace dstrain::sharding {
namespace {

// The fused loss's chunk: about 256 MiB of fp32 logits (runtime/model/fused_cross_entropy.h).
constexpr int64_t kLossChunkBudget = int64_t{256} << 20;

bool targets(const ActivationShape& s, const char* name) {
  return s.lora &&
         std::find(s.lora_targets.begin(), s.lora_targets.end(), name) != s.lora_targets.end();
}

// rms_norm's saved tensors when its input or weight needs a gradient. `input_is_kept`: the input
// is held anyway (a unit input), so an alias of it costs nothing.
int64_t norm_saved(const ActivationShape& s, bool input_is_kept, bool input_grad,
                   bool weight_grad) {
  if (!input_grad && !weight_grad) return 0;
  const int64_t bth = s.batch * s.seq * s.hidden;
  const int64_t rstd = 8 * s.batch * s.seq;  // fp32 [B, T, 1] (the composite keeps two)
  if (s.cuda) return rstd + (input_is_kept ? 0 : s.dtype_bytes * bth);
  // The composite upcasts: an fp32 input is its own fp32 copy.
  const int64_t copy = (s.dtype_bytes == 4 && input_is_kept) ? 0 : 4 * bth;
  return rstd + copy + (weight_grad ? 4 * bth : 0);
}

// An adapter on a projection with `in` inputs: its rank-r intermediate (what lora_B's gradient
// needs), and with dropout the dropped input (lora_A's) and the mask (the input's gradient).
int64_t adapter_saved(const ActivationShape& s, int64_t in, bool input_grad) {
  const int64_t bt = s.batch * s.seq;
  int64_t bytes = s.dtype_bytes * bt * s.lora_rank;
  if (s.lora_dropout) bytes += s.dtype_bytes * bt * in * (input_grad ? 2 : 1);
  return bytes;
}

// The adapters of a fused projection (runtime/model/layers.cc): with every projection targeted
// and no dropout they run as one product over the stacked A matrices [n r, in] (kept for the
// input's gradient) and one over the block-diagonal B matrix [out, n r] (kept for the
// intermediate's gradient), both fresh tensors; otherwise each adapter on its own, reading its
// parameters in place. The intermediates are adapter_saved's either way.
int64_t stacked_adapters_saved(const ActivationShape& s, int n, int64_t in, int64_t out,
                               bool input_grad) {
  if (s.lora_dropout) return 0;
  const int64_t nr = n * s.lora_rank;
  return s.dtype_bytes * ((input_grad ? nr * in : 0) + out * nr);
}

}  // namespace

ActivationShape activation_shape(const base::ModelConfig& model, const base::TrainConfig& train,
                                 const base::LoraConfig& lora, bool cuda) {
  ActivationShape s;
  s.batch = train.micro_batch;
  s.seq = train.seq_len;
  s.hidden = model.hidden_size;
  s.inter = model.intermediate_size;
  s.vocab = model.vocab_size;
  s.heads = model.num_heads;
  s.kv_heads = model.num_kv_heads;
  s.head_dim = model.resolved_head_dim();
  s.dtype_bytes = train.dtype == "fp32" ? 4 : 2;
  s.cuda = cuda;
  s.lora = lora.enabled;
  s.lora_rank = lora.rank;
  s.lora_dropout = lora.enabled && lora.dropout > 0.0;
  for (const std::string& t : lora.targets) {
    if (t == "all-linear") {
      s.lora_targets = {"q", "k", "v", "o", "gate", "up", "down"};
      break;
    }
    s.lora_targets.push_back(t);
  }
  return s;
}

UnitActivations embed_activations(const ActivationShape& s) {
  UnitActivations a;
  a.output = s.dtype_bytes * s.batch * s.seq * s.hidden;  // the embedding keeps only the ids
  return a;
}

UnitActivations layer_activations(const ActivationShape& s, bool input_grad, bool sinks) {
  const int64_t c = s.dtype_bytes;
  const int64_t bt = s.batch * s.seq;
  const int64_t bth = bt * s.hidden;
  const int64_t bti = bt * s.inter;
  const int64_t q_out = s.heads * s.head_dim;
  const int64_t kv_out = s.kv_heads * s.head_dim;
  const int64_t qkv_out = q_out + 2 * kv_out;
  const bool full = !s.lora;  // every weight of the layer trains
  const bool tq = targets(s, "q"), tk = targets(s, "k"), tv = targets(s, "v"), to = targets(s, "o");
  const bool tgate = targets(s, "gate"), tup = targets(s, "up"), tdown = targets(s, "down");
  UnitActivations a;
  a.output = c * bth;

  // Attention block: input_layernorm, one q|k|v projection over the concatenated weights, RoPE,
  // SDPA, o_proj.
  int64_t saved = norm_saved(s, /*input_is_kept=*/true, input_grad, full);
  const bool xn1_grad = full || input_grad;
  // The normed input is what the weights' (or adapters') gradients need; the concatenated weight
  // is what the input's gradient needs: a fresh copy every forward when autograd forms the
  // weights' gradients, read in place when their ops write them into sinks or they are frozen.
  if (full || ((tq || tk || tv) && !s.lora_dropout)) saved += c * bth;
  if (full && !sinks) saved += c * qkv_out * s.hidden;
  for (bool t : {tq, tk, tv}) {
    if (t) saved += adapter_saved(s, s.hidden, xn1_grad);
  }
  if (tq && tk && tv) saved += stacked_adapters_saved(s, 3, s.hidden, qkv_out, xn1_grad);
  const bool attn_grad = xn1_grad || tq || tk || tv;
  if (attn_grad) {
    // SDPA (flash) keeps the rotated q and k, v (a view that holds the whole q|k|v output), its
    // output (whose [B, T, heads*hd] view is o_proj's input) and the fp32 logsumexp.
    saved += c * bt * (qkv_out + q_out + kv_out + q_out) + 4 * s.batch * s.heads * s.seq;
  }
  if (to) saved += adapter_saved(s, q_out, attn_grad);

  // MLP block: post_attention_layernorm over h = x + attn, one gate|up projection, SwiGLU, down.
  const bool h_grad = attn_grad || to;
  saved += norm_saved(s, /*input_is_kept=*/false, h_grad, full);
  if (full || ((tgate || tup) && !s.lora_dropout)) saved += c * bth;
  if (full && !sinks) saved += c * 2 * s.inter * s.hidden;
  for (bool t : {tgate, tup}) {
    if (t) saved += adapter_saved(s, s.hidden, h_grad);
  }
  if (tgate && tup) saved += stacked_adapters_saved(s, 2, s.hidden, 2 * s.inter, h_grad);
  const bool gate_up_grad = full || h_grad || tgate || tup;
  if (gate_up_grad) {
    // The gate|up output (SwiGLU's input); the ATen path also keeps silu(gate).
    saved += c * 2 * bti + (s.cuda ? 0 : c * bti);
  }
  if (full || (tdown && !s.lora_dropout)) saved += c * bti;  // down's input
  if (tdown) saved += adapter_saved(s, s.inter, gate_up_grad);
  a.saved = saved;
  // Backward: the incoming gradient plus a few activation gradients alive at once (the MLP's
  // [B, T, inter] ones dominate).
  a.backward_ws = 3 * c * bti + 2 * c * bth;
  return a;
}

UnitActivations head_activations(const ActivationShape& s, bool input_grad, bool head_trainable,
                                 bool sinks) {
  const int64_t c = s.dtype_bytes;
  const int64_t bt = s.batch * s.seq;
  const int64_t bth = bt * s.hidden;
  const int64_t vh = s.vocab * s.hidden;
  const bool norm_weight_grad = !s.lora;
  UnitActivations a;
  // The fused loss keeps its gradients, formed in the forward: dx in the compute dtype and dw in
  // fp32 (summed over chunks); the output is a scalar.
  a.saved = norm_saved(s, /*input_is_kept=*/true, input_grad, norm_weight_grad) +
            (input_grad ? c * bth : 0) + (head_trainable ? 4 * vh : 0);
  // Forward: the normed hidden states and one chunk's logits. On CUDA the product writes them in
  // fp32 and the loss kernel writes the compute-dtype gradient beside them (when one is needed):
  // 4 + c bytes a logit. Elsewhere (ATen) the fp32 logits sit beside the temporary of the same
  // size logsumexp forms (exp(x - max), out of place): 8 bytes, more than the compute-dtype
  // product before the fp32 copy or the gradient after the in-place softmax (4 + c each); in
  // bf16 with a trainable head also a widened copy of that gradient for dw.
  const int64_t chunk =
      std::min(bt, std::max<int64_t>(1, kLossChunkBudget / (4 * std::max<int64_t>(s.vocab, 1))));
  const bool need_grad = input_grad || head_trainable;
  const int64_t per_logit = s.cuda                     ? 4 + (need_grad ? c : 0)
                            : c != 4 && head_trainable ? 4 + c + 4
                                                       : 8;
  a.forward_ws = c * bth + chunk * s.vocab * per_logit;
  // Backward: dx and dw scaled by the incoming gradient, dw then rounded to the weight's dtype
  // (into a new fp32 tensor first), or scaled straight into its sink.
  const int64_t dw_ws = sinks ? 0 : (4 + (c != 4 ? c : 0)) * vh;
  a.backward_ws = (input_grad ? c * bth : 0) + (head_trainable ? dw_ws : 0);
  return a;
}

}  // namespace dstrain::sharding
