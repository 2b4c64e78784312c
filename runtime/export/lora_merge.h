#pragma once
// Folding a LoRA adapter into its base weight, in fp32, as PEFT's merge does.
#include <cstdint>

#include "base/status.h"

namespace dstrain::runtime::exporter {

// weight [out, in] += scale * b [out, rank] @ a [rank, in], all row-major fp32 host buffers
// owned by the caller. Runs on ATen's CPU threads (a GEMM per projection).
base::Status merge_lora(float* weight, const float* a, const float* b, int64_t out, int64_t in,
                        int64_t rank, double scale);

}  // namespace dstrain::runtime::exporter
