#pragma once
// LoRA applied to a built Llama-family model, in one function: every base parameter is frozen
// (kept in the compute dtype only: no master, no gradient, no optimizer state) and the targeted
// projections of every decoder layer get adapters with PEFT's names, initialisation and scaling.
#include "base/config.h"
#include "base/status.h"
#include "base/unit.h"

namespace dstrain::runtime {

// alpha / rank, or alpha / sqrt(rank) with rsLoRA.
double lora_scale(const base::LoraConfig& cfg);
// "all-linear" expands to every projection (q k v o gate up down), as PEFT's does (lm_head
// excluded).
std::vector<std::string> lora_target_list(const base::LoraConfig& cfg);

// Requires units made by build_llama. kInvalidArgument naming lora.targets when no adapter was
// added, or lora.rank when it is not positive.
base::Status apply_lora(base::UnitList& units, const base::LoraConfig& cfg);

}  // namespace dstrain::runtime
