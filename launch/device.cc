#include "launch/device.h"

#include <ATen/detail/CUDAHooksInterface.h>

#include <cstdlib>
#include <string>

#include "sharding/nccl_factory.h"

namespace dstrain::launch {

base::StatusOr<at::Device> select_device(const std::string& run_device, const World& world) {
  if (run_device == "cpu") return at::Device(at::kCPU);
  // Builds without NCCL answer the version query with an error.
  const bool have_nccl = sharding::nccl_version_string().ok();
  const int gpus =
      at::detail::getCUDAHooks().hasCUDA() ? at::detail::getCUDAHooks().deviceCount() : 0;
  if (run_device == "auto" && (gpus == 0 || !have_nccl)) return at::Device(at::kCPU);
  if (gpus == 0)
    return base::Status::InvalidArgument("run.device = \"cuda\" but no GPU is visible");
  if (!have_nccl) {
    return base::Status::InvalidArgument("run.device = \"cuda\" but this build has no NCCL");
  }
  // DSTRAIN_TEST_SHARE_GPU=1, for tests only: ranks share the GPUs round-robin, so the NCCL
  // paths of several ranks run on one GPU. NCCL accepts two ranks on one GPU only when they
  // claim different hosts (NCCL_HOSTID per rank; tests/gpu/shared_gpu_rank.sh sets both).
  const char* share = std::getenv("DSTRAIN_TEST_SHARE_GPU");
  if (share != nullptr && std::string(share) == "1") {
    return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(world.local_rank() % gpus));
  }
  if (world.local_size() > gpus) {
    return base::Status::InvalidArgument(
        std::to_string(world.local_size()) + " ranks on this node but " + std::to_string(gpus) +
        " GPU(s): start at most one rank per GPU, or set run.device = \"cpu\"");
  }
  return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(world.local_rank()));
}

}  // namespace dstrain::launch
