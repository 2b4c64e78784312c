#include "runtime/model/rope.h"

#include <algorithm>
#include <cmath>

namespace dstrain::runtime {
namespace {

constexpr double kPi = 3.14159265358979323846;

at::TensorOptions fp32_on(const at::Device& device) {
  return at::TensorOptions().dtype(at::kFloat).device(device);
}

// base ** (arange(0, dim, 2) / dim) in fp32, as every HF variant starts.
at::Tensor base_powers(double base, int64_t dim, const at::Device& device) {
  const at::Tensor exponents =
      at::arange(0, dim, 2, at::TensorOptions().dtype(at::kLong).device(device)).to(at::kFloat) /
      static_cast<double>(dim);
  return at::pow(base, exponents);
}

int64_t original_max_positions(const base::ModelConfig& cfg) {
  // HF's standardize_rope_params defaults it to max_position_embeddings.
  return cfg.rope_scaling.original_max_position_embeddings > 0
             ? cfg.rope_scaling.original_max_position_embeddings
             : cfg.max_position_embeddings;
}

at::Tensor llama3_inv_freq(const base::ModelConfig& cfg, int64_t dim, const at::Device& device) {
  const auto& rs = cfg.rope_scaling;
  const at::Tensor inv_freq = 1.0 / base_powers(cfg.rope_theta, dim, device);
  const double old_context = static_cast<double>(original_max_positions(cfg));
  const double low_freq_wavelen = old_context / rs.low_freq_factor;
  const double high_freq_wavelen = old_context / rs.high_freq_factor;
  const at::Tensor wavelen = (2 * kPi) / inv_freq;
  // Long wavelengths are interpolated by `factor`, short ones kept, the band between blended.
  const at::Tensor scaled = at::where(wavelen.gt(low_freq_wavelen), inv_freq / rs.factor, inv_freq);
  const at::Tensor smooth =
      (old_context / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
  const at::Tensor smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled;
  const at::Tensor is_medium = at::logical_and(wavelen.lt(high_freq_wavelen).logical_not(),
                                               wavelen.gt(low_freq_wavelen).logical_not());
  return at::where(is_medium, smoothed, scaled);
}

double yarn_correction_dim(double rotations, int64_t dim, double base, int64_t max_positions) {
  return (static_cast<double>(dim) *
          std::log(static_cast<double>(max_positions) / (rotations * 2 * kPi))) /
         (2 * std::log(base));
}

RopeFrequencies yarn_frequencies(const base::ModelConfig& cfg, int64_t dim,
                                 const at::Device& device) {
  const auto& rs = cfg.rope_scaling;
  const double factor = rs.factor;
  const int64_t original = original_max_positions(cfg);
  const at::Tensor pos_freqs = base_powers(cfg.rope_theta, dim, device);
  const at::Tensor extrapolation = 1.0 / pos_freqs;
  const at::Tensor interpolation = 1.0 / (factor * pos_freqs);

  // HF truncates the correction range by default (`truncate` = True).
  double low = std::floor(yarn_correction_dim(rs.beta_fast, dim, cfg.rope_theta, original));
  double high = std::ceil(yarn_correction_dim(rs.beta_slow, dim, cfg.rope_theta, original));
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;  // as HF: avoids a zero-width ramp
  const at::Tensor ramp =
      at::clamp((at::arange(dim / 2, fp32_on(device)) - low) / (high - low), 0, 1);
  const at::Tensor extrapolation_factor = 1 - ramp;
  RopeFrequencies out;
  out.inv_freq = interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor;
  out.attention_scaling = factor <= 1.0 ? 1.0 : 0.1 * std::log(factor) + 1.0;
  return out;
}

// HF evaluates the dynamic base with tensors in fp32; doing the same keeps the frequencies
// bit-compatible.
at::Tensor dynamic_inv_freq(const base::ModelConfig& cfg, int64_t dim, int64_t seq_len,
                            const at::Device& device) {
  const double factor = cfg.rope_scaling.factor;
  const int64_t length = std::max(seq_len, cfg.max_position_embeddings);
  const at::Tensor len = at::scalar_tensor(length, at::TensorOptions().dtype(at::kLong));
  const at::Tensor ratio = (len * factor / cfg.max_position_embeddings - (factor - 1))
                               .pow(static_cast<double>(dim) / static_cast<double>(dim - 2));
  const at::Tensor base = (cfg.rope_theta * ratio).to(device);
  const at::Tensor exponents =
      at::arange(0, dim, 2, at::TensorOptions().dtype(at::kLong).device(device)).to(at::kFloat) /
      static_cast<double>(dim);
  return 1.0 / at::pow(base, exponents);
}

}  // namespace

base::StatusOr<RopeType> parse_rope_type(const std::string& name) {
  if (name == "none" || name == "default") return RopeType::kDefault;
  if (name == "linear") return RopeType::kLinear;
  if (name == "dynamic") return RopeType::kDynamic;
  if (name == "llama3") return RopeType::kLlama3;
  if (name == "yarn") return RopeType::kYarn;
  return base::Status::InvalidArgument("rope_scaling.type: unknown type '" + name +
                                       "' (none|linear|dynamic|llama3|yarn)");
}

base::Status validate_rope_config(const base::ModelConfig& cfg) {
  ASSIGN_OR_RETURN(const RopeType type, parse_rope_type(cfg.rope_scaling.type));
  const auto& rs = cfg.rope_scaling;
  if (!(cfg.rope_theta > 1.0)) {
    return base::Status::InvalidArgument("rope_theta must be > 1, got " +
                                         std::to_string(cfg.rope_theta));
  }
  if (type != RopeType::kDefault && !(rs.factor > 0.0)) {
    return base::Status::InvalidArgument("rope_scaling.factor must be > 0, got " +
                                         std::to_string(rs.factor));
  }
  if (type == RopeType::kLlama3 && !(rs.high_freq_factor > rs.low_freq_factor)) {
    return base::Status::InvalidArgument(
        "rope_scaling.high_freq_factor (" + std::to_string(rs.high_freq_factor) +
        ") must exceed low_freq_factor (" + std::to_string(rs.low_freq_factor) + ")");
  }
  if (type == RopeType::kLlama3 && !(rs.low_freq_factor > 0.0)) {
    return base::Status::InvalidArgument("rope_scaling.low_freq_factor must be > 0");
  }
  if (type == RopeType::kYarn && !(rs.beta_fast > 0.0 && rs.beta_slow > 0.0)) {
    return base::Status::InvalidArgument("rope_scaling.beta_fast and beta_slow must be > 0");
  }
  if (type == RopeType::kDynamic && cfg.resolved_head_dim() <= 2) {
    return base::Status::InvalidArgument("dynamic rope scaling needs head_dim > 2");
  }
  if ((type == RopeType::kDynamic || type == RopeType::kYarn || type == RopeType::kLlama3) &&
      cfg.max_position_embeddings <= 0) {
    return base::Status::InvalidArgument("max_position_embeddings must be > 0 for rope_scaling." +
                                         rs.type);
  }
  return base::Status::Ok();
}

base::StatusOr<RopeFrequencies> rope_frequencies(const base::ModelConfig& cfg, int64_t seq_len,
                                                 const at::Device& device) {
  RETURN_IF_ERROR(validate_rope_config(cfg));
  ASSIGN_OR_RETURN(const RopeType type, parse_rope_type(cfg.rope_scaling.type));
  const int64_t dim = cfg.resolved_head_dim();
  RopeFrequencies out;
  switch (type) {
    case RopeType::kDefault:
      out.inv_freq = 1.0 / base_powers(cfg.rope_theta, dim, device);
      break;
    case RopeType::kLinear:
      out.inv_freq = 1.0 / base_powers(cfg.rope_theta, dim, device) / cfg.rope_scaling.factor;
      break;
    case RopeType::kDynamic:
      out.inv_freq = dynamic_inv_freq(cfg, dim, seq_len, device);
      break;
    case RopeType::kLlama3:
      out.inv_freq = llama3_inv_freq(cfg, dim, device);
      break;
    case RopeType::kYarn:
      out = yarn_frequencies(cfg, dim, device);
      break;
  }
  return out;
}

base::StepContext make_step_context(const base::ModelConfig& cfg, const at::Tensor& position_ids,
                                    at::ScalarType dtype) {
  int64_t seq_len = position_ids.size(-1);
  if (cfg.rope_scaling.type == "dynamic" && position_ids.numel() > 0) {
    seq_len = position_ids.max().item<int64_t>() + 1;
  }
  auto frequencies = rope_frequencies(cfg, seq_len, position_ids.device());
  // Same failure channel as ATen's own argument checks; callers validate the config first.
  TORCH_CHECK(frequencies.ok(), frequencies.status().message());
  const RopeFrequencies& rope = *frequencies;
  const at::Tensor freqs = position_ids.unsqueeze(-1).to(at::kFloat) * rope.inv_freq;
  const at::Tensor emb = at::cat({freqs, freqs}, -1);
  base::StepContext ctx;
  ctx.position_ids = position_ids;
  ctx.rope_cos = (emb.cos() * rope.attention_scaling).to(dtype);
  ctx.rope_sin = (emb.sin() * rope.attention_scaling).to(dtype);
  return ctx;
}

}  // namespace dstrain::runtime
