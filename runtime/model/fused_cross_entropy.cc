#include "runtime/model/fused_cross_entropy.h"

#include <torch/csrc/autograd/custom_function.h>

#include "runtime/kernels/fused_ops.h"
#include "runtime/model/sink_linear.h"

#include <algorithm>
#include <optional>

namespace dstrain::runtime {
namespace {

constexpr int64_t kIgnoreIndex = -100;

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Loss and logit gradient of one chunk (the gradient in the compute dtype, [c, V]).
kernels::CrossEntropyRows chunk_loss(const at::Tensor& h, const at::Tensor& weight,
                                     const at::Tensor& targets, bool need_grad) {
  const std::optional<at::ScalarType> grad_dtype =
      need_grad ? std::optional<at::ScalarType>(h.scalar_type()) : std::nullopt;
  if (h.is_cuda() && kernels::cuda_kernels_built()) {
    // fp32 logits straight from the product (no compute-dtype rounding, no cast), then one
    // kernel for the loss and the gradient.
    const at::Tensor logits =
        h.scalar_type() == at::kFloat ? at::mm(h, weight.t()) : at::mm(h, weight.t(), at::kFloat);
    return kernels::cross_entropy_rows(logits, targets, kIgnoreIndex, grad_dtype);
  }
  return cross_entropy_rows_aten(at::matmul(h, weight.t()).to(at::kFloat), targets, grad_dtype);
}

// The summed loss of `x` [N, H] against `t` [N], and the gradients asked for (fp32 for the
// weight: it sums over every chunk).
struct ChunkedLoss {
  at::Tensor loss;
  at::Tensor dx;
  at::Tensor dw;
};

ChunkedLoss chunked_loss(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& t,
                         int64_t chunk_tokens, bool grad_x, bool grad_w) {
  const int64_t n = x.size(0);
  ChunkedLoss out;
  out.loss = at::zeros({}, x.options().dtype(at::kFloat));
  if (grad_x) out.dx = at::empty_like(x);
  if (grad_w) out.dw = at::zeros(weight.sizes(), weight.options().dtype(at::kFloat));
  for (int64_t begin = 0; begin < n; begin += chunk_tokens) {
    const int64_t len = std::min(chunk_tokens, n - begin);
    const at::Tensor xc = x.narrow(0, begin, len);
    kernels::CrossEntropyRows r = chunk_loss(xc, weight, t.narrow(0, begin, len), grad_x || grad_w);
    out.loss.add_(r.loss);
    if (grad_x) {
      at::Tensor dx_rows = out.dx.narrow(0, begin, len);
      at::mm_out(dx_rows, r.grad, weight);
    }
    if (grad_w) matmul_into_fp32(out.dw, r.grad.t(), xc, /*add=*/true);
  }
  return out;
}

class FusedLinearCrossEntropy : public torch::autograd::Function<FusedLinearCrossEntropy> {
 public:
  // Runs with grad mode off (autograd::Function); the gradients for the scalar loss are kept
  // for backward, which only scales them by the incoming gradient.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hidden,
                            const at::Tensor& weight, const at::Tensor& targets,
                            int64_t chunk_tokens, const base::GradSink& sink) {
    ChunkedLoss r = chunked_loss(hidden.reshape({-1, hidden.size(-1)}), weight,
                                 targets.reshape({-1}), chunk_tokens, hidden.requires_grad(),
                                 weight.requires_grad() || sink.defined());
    ctx->saved_data["dx"] = r.dx.defined() ? r.dx.view(hidden.sizes()) : r.dx;
    ctx->saved_data["dw"] = r.dw;
    ctx->saved_data["w_dtype"] = weight.scalar_type();
    save_sink(ctx, sink);
    return r.loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const at::Tensor& g = grad_out[0];
    // Taken out of the context: the caller may keep this node (the loss) alive through the rest
    // of backward, and the fp32 weight gradient is the size of the head.
    at::Tensor dx = ctx->saved_data["dx"].toTensor();
    at::Tensor dw = ctx->saved_data["dw"].toTensor();
    const at::ScalarType w_dtype = ctx->saved_data["w_dtype"].toScalarType();
    const base::GradSink sink = take_saved_sink(ctx);
    ctx->saved_data.clear();
    // In place: backward runs once, and the saved gradients are not needed afterwards.
    if (dx.defined()) dx.mul_(g.to(dx.scalar_type()));
    if (dw.defined() && sink.defined()) {
      // Scaled in fp32 straight into its place in the gradient buffer.
      base::GradSinkBuffer::Slot slot = sink.buffer->take(sink.offset, dw.sizes());
      if (slot.add) {
        slot.view.addcmul_(dw, g);
      } else {
        at::mul_out(slot.view, dw, g);
      }
      dw = at::Tensor();
    } else if (dw.defined()) {
      // Scaled in fp32, rounded once to the weight's dtype.
      dw = dw.mul_(g).to(w_dtype);
    }
    return {dx, dw, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

kernels::CrossEntropyRows cross_entropy_rows_aten(at::Tensor logits, const at::Tensor& targets,
                                                  std::optional<at::ScalarType> grad_dtype) {
  // 1 for rows with a target, 0 for ignored ones; their index is clamped to a valid column.
  const at::Tensor counted = targets.ne(kIgnoreIndex).to(at::kFloat).unsqueeze(1);
  const at::Tensor column = targets.clamp_min(0).unsqueeze(1);
  const at::Tensor lse = at::logsumexp(logits, -1, /*keepdim=*/true);
  kernels::CrossEntropyRows r;
  r.loss = ((lse - logits.gather(1, column)) * counted).sum();
  if (!grad_dtype) return r;
  // softmax - one_hot(target), zero on ignored rows, formed in place in the logits.
  logits.sub_(lse).exp_();
  logits.scatter_add_(1, column, at::full({logits.size(0), 1}, -1.0, logits.options()));
  logits.mul_(counted);
  r.grad = logits.to(*grad_dtype);
  return r;
}

int64_t cross_entropy_chunk_tokens(int64_t vocab, int64_t budget_bytes) {
  return std::max<int64_t>(1, budget_bytes / (std::max<int64_t>(vocab, 1) * 4));
}

at::Tensor fused_linear_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight,
                                      const at::Tensor& targets, int64_t chunk_tokens,
                                      const base::GradSink& weight_sink) {
  TORCH_CHECK(chunk_tokens > 0, "fused_linear_cross_entropy: chunk_tokens must be > 0");
  TORCH_CHECK(!weight_sink.defined() || !weight.requires_grad(),
              "fused_linear_cross_entropy: a weight with a gradient sink must not require grad");
  TORCH_CHECK(!weight_sink.defined() || !at::GradMode::is_enabled() || hidden.requires_grad(),
              "fused_linear_cross_entropy: with grad mode on and a weight sink, the hidden "
              "states must require grad, else no backward writes the weight's gradient");
  if (!hidden.requires_grad() && !weight.requires_grad()) {  // evaluation: no graph
    return chunked_loss(hidden.reshape({-1, hidden.size(-1)}), weight, targets.reshape({-1}),
                        chunk_tokens, /*grad_x=*/false, /*grad_w=*/false)
        .loss;
  }
  return FusedLinearCrossEntropy::apply(hidden, weight, targets, chunk_tokens, weight_sink);
}

}  // namespace dstrain::runtime
