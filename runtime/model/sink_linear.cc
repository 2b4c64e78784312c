#include "runtime/model/sink_linear.h"

#include <torch/csrc/autograd/custom_function.h>

#include <optional>

namespace dstrain::runtime {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class SinkLinear : public torch::autograd::Function<SinkLinear> {
 public:
  // `bias` is optional: an absent one is no input of the graph at all.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, const base::GradSink& sink) {
    ctx->save_for_backward({x, weight});
    save_sink(ctx, sink);
    ctx->saved_data["bias"] = bias.has_value();
    return bias ? at::linear(x, weight, *bias) : at::linear(x, weight);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor& gy = grad_out[0];
    const at::Tensor gy_rows = gy.reshape({-1, gy.size(-1)});
    at::Tensor gx, gbias;
    if (ctx->needs_input_grad(0)) gx = at::matmul(gy, weight);
    if (ctx->saved_data["bias"].toBool() && ctx->needs_input_grad(2)) gbias = gy_rows.sum(0);
    const base::GradSink sink = take_saved_sink(ctx);
    base::GradSinkBuffer::Slot slot = sink.buffer->take(sink.offset, weight.sizes());
    matmul_into_fp32(slot.view, gy_rows.t(), x.reshape({-1, x.size(-1)}), slot.add);
    return {gx, at::Tensor(), gbias, at::Tensor()};
  }
};

}  // namespace

void save_sink(AutogradContext* ctx, const base::GradSink& sink) {
  if (!sink.defined()) return;
  ctx->saved_data["sink"] = c10::IValue::make_capsule(sink.buffer);
  ctx->saved_data["sink_offset"] = sink.offset;
}

base::GradSink take_saved_sink(AutogradContext* ctx) {
  base::GradSink sink;
  auto it = ctx->saved_data.find("sink");
  if (it == ctx->saved_data.end()) return sink;
  sink.buffer = c10::static_intrusive_pointer_cast<base::GradSinkBuffer>(it->second.toCapsule());
  sink.offset = ctx->saved_data["sink_offset"].toInt();
  ctx->saved_data.erase("sink");
  ctx->saved_data.erase("sink_offset");
  return sink;
}

void matmul_into_fp32(at::Tensor& dst, const at::Tensor& a, const at::Tensor& b, bool add) {
  if (a.scalar_type() == at::kFloat) {
    if (add) {
      dst.addmm_(a, b);
    } else {
      at::mm_out(dst, a, b);
    }
  } else if (a.is_cuda()) {
    if (add) {
      at::addmm_out(dst, dst, a, b, at::kFloat);
    } else {
      at::mm_out(dst, a, b, at::kFloat);
    }
  } else if (add) {
    dst.addmm_(a.to(at::kFloat), b.to(at::kFloat));
  } else {
    at::mm_out(dst, a.to(at::kFloat), b.to(at::kFloat));
  }
}

at::Tensor sink_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                       const base::GradSink& sink) {
  TORCH_CHECK(sink.defined(), "sink_linear: the sink is undefined");
  TORCH_CHECK(!weight.requires_grad(),
              "sink_linear: the weight's gradient goes to its sink, so "
              "the weight must not require grad");
  // Backward reaches the sink only through a graph, which exists only if an input needs a
  // gradient.
  TORCH_CHECK(
      !at::GradMode::is_enabled() || x.requires_grad() || (bias.defined() && bias.requires_grad()),
      "sink_linear: with grad mode on, the input must require grad, else no backward "
      "writes the weight's gradient");
  std::optional<at::Tensor> b;
  if (bias.defined()) b = bias;
  return SinkLinear::apply(x, weight, b, sink);
}

}  // namespace dstrain::runtime
