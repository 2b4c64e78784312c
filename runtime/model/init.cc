#include "runtime/model/init.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <cmath>
#include <map>

namespace dstrain::runtime {
namespace {

constexpr uint64_t kFnvOffset = 14695981039346656037ULL;
constexpr uint64_t kFnvPrime = 1099511628211ULL;

uint64_t fnv1a(uint64_t hash, uint8_t byte) { return (hash ^ byte) * kFnvPrime; }

std::string shape_string(at::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

at::Tensor generate(const base::ParamSpec& spec, int64_t seed) {
  const auto cpu_fp32 = at::TensorOptions().dtype(at::kFloat).device(at::kCPU);
  switch (spec.init) {
    case base::InitKind::kZeros:
      return at::zeros(spec.shape, cpu_fp32);
    case base::InitKind::kOnes:
      return at::ones(spec.shape, cpu_fp32);
    case base::InitKind::kNormal: {
      at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(param_seed(seed, spec.name));
      return at::empty(spec.shape, cpu_fp32).normal_(0.0, spec.init_std, gen);
    }
    case base::InitKind::kKaimingUniform: {
      // nn.Linear's default: kaiming_uniform_(a=sqrt(5)) gives bound 1/sqrt(fan_in).
      const int64_t fan_in = spec.shape.size() >= 2 ? spec.numel() / spec.shape[0]
                                                    : (spec.shape.empty() ? 1 : spec.shape[0]);
      const double bound = 1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(fan_in, 1)));
      at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(param_seed(seed, spec.name));
      return at::empty(spec.shape, cpu_fp32).uniform_(-bound, bound, gen);
    }
  }
  return at::Tensor();
}

}  // namespace

uint64_t param_seed(int64_t seed, const std::string& name) {
  uint64_t hash = kFnvOffset;
  const auto useed = static_cast<uint64_t>(seed);
  for (int i = 0; i < 8; ++i) hash = fnv1a(hash, static_cast<uint8_t>(useed >> (8 * i)));
  for (char c : name) hash = fnv1a(hash, static_cast<uint8_t>(c));
  return hash;
}

base::Status init_unit_params(const base::Unit& unit, at::TensorList out, int64_t seed) {
  const auto& schema = unit.schema();
  if (out.size() != schema.size()) {
    return base::Status::InvalidArgument("unit " + unit.name() + ": " + std::to_string(out.size()) +
                                         " tensors for " + std::to_string(schema.size()) +
                                         " parameters");
  }
  for (size_t i = 0; i < schema.size(); ++i) {
    const base::ParamSpec& spec = schema[i];
    if (!spec.tied_to.empty()) continue;
    if (!out[i].defined() || out[i].sizes() != at::IntArrayRef(spec.shape)) {
      return base::Status::InvalidArgument(
          spec.name + ": tensor shape " +
          (out[i].defined() ? shape_string(out[i].sizes()) : std::string("undefined")) +
          " does not match schema " + shape_string(spec.shape));
    }
  }
  try {
    // Every parameter has its own generator (seeded by its name), so they fill in parallel with
    // the same values as one after another: the serial CPU generator would otherwise make the
    // random initialisation of a 13B model take minutes.
    at::parallel_for(0, static_cast<int64_t>(schema.size()), 1, [&](int64_t begin, int64_t end) {
      // Parameters may be leaves that require grad; filling them is not part of any graph.
      c10::NoGradGuard no_grad;
      for (int64_t i = begin; i < end; ++i) {
        if (!schema[i].tied_to.empty()) continue;
        at::Tensor dst = out[i];
        dst.copy_(generate(schema[i], seed));
      }
    });
  } catch (const c10::Error& e) {
    return base::Status::Internal("init of unit " + unit.name() + ": " +
                                  e.what_without_backtrace());
  }
  return base::Status::Ok();
}

base::StatusOr<std::vector<std::vector<at::Tensor>>> make_model_params(
    const base::UnitList& units, const at::TensorOptions& options, int64_t seed) {
  std::vector<std::vector<at::Tensor>> params(units.size());
  std::map<std::string, at::Tensor> owners;
  try {
    for (size_t u = 0; u < units.size(); ++u) {
      for (const base::ParamSpec& spec : units[u]->schema()) {
        if (spec.tied_to.empty()) {
          params[u].push_back(at::empty(spec.shape, options));
          owners[spec.name] = params[u].back();
          continue;
        }
        auto owner = owners.find(spec.tied_to);
        if (owner == owners.end()) {
          return base::Status::InvalidArgument(spec.name + " is tied to " + spec.tied_to +
                                               ", which no earlier unit owns");
        }
        params[u].push_back(owner->second);
      }
      RETURN_IF_ERROR(init_unit_params(*units[u], params[u], seed));
    }
  } catch (const c10::Error& e) {
    return base::Status::Internal(std::string("allocating parameters: ") +
                                  e.what_without_backtrace());
  }
  return params;
}

}  // namespace dstrain::runtime
