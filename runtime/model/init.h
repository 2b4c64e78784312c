#pragma once
// Deterministic parameter initialisation: each parameter's values depend only on the run seed
// and its name, never on world size, rank, dtype or device, so a sharded job fills its shards
// exactly as a single process would.
#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"
#include "base/unit.h"

namespace dstrain::runtime {

// FNV-1a 64 over the seed's 8 little-endian bytes, then the name's bytes. Stable across
// platforms and compilers (unlike std::hash).
uint64_t param_seed(int64_t seed, const std::string& name);

// Fills `out` (one tensor per schema entry, any dtype and device, shapes as the schema) per
// each entry's InitKind: normal(0, init_std), zeros, ones, or kaiming-uniform(a=sqrt(5)) as
// nn.Linear. Values are generated in fp32 on the CPU from param_seed(seed, name) and copied.
// Tied entries are left alone: their owner fills the shared storage.
base::Status init_unit_params(const base::Unit& unit, at::TensorList out, int64_t seed);

// Allocates and initialises every unit's parameters with `options`; tied slots hold their
// owner's tensor. For tests, evaluation and single-process use; the engine owns its own storage.
base::StatusOr<std::vector<std::vector<at::Tensor>>> make_model_params(
    const base::UnitList& units, const at::TensorOptions& options, int64_t seed);

}  // namespace dstrain::runtime
