#pragma once
// Which device this rank computes on: one GPU per local rank (cuda:<local rank>) or the CPU.
#include <ATen/ATen.h>

#include "base/status.h"
#include "launch/world.h"

namespace dstrain::launch {

// run.device: "cpu"; "cuda" (GPUs or an error); "auto" (GPUs when the machine has any and this
// build has NCCL, else the CPU). With GPUs, more ranks on a node than GPUs is an error naming both
// counts (kInvalidArgument).
base::StatusOr<at::Device> select_device(const std::string& run_device, const World& world);

}  // namespace dstrain::launch
