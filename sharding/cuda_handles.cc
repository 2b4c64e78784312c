#include "sharding/cuda_handles.h"

#include <c10/cuda/CUDAFunctions.h>

#include <string>
#include <utility>

namespace dstrain::sharding {

base::Status cuda_status(cudaError_t rc, const char* call, const char* file, int line) {
  if (rc == cudaSuccess) return base::Status::Ok();
  return base::Status::Internal(std::string(file) + ":" + std::to_string(line) + ": " + call +
                                ": " + cudaGetErrorName(rc) + ": " + cudaGetErrorString(rc));
}

base::StatusOr<CudaDeviceScope> CudaDeviceScope::enter(int device) {
  // LibTorch's device functions, not cudaGetDevice/cudaSetDevice: they agree with LibTorch's own
  // guards on which device is current, and MaybeSetDevice below creates no CUDA context.
  c10::DeviceIndex previous = 0;
  RETURN_IF_ERROR(CUDA_CHECK(c10::cuda::GetDevice(&previous)));
  // Forced: the runtime's own current device must be `device` for the calls that follow.
  RETURN_IF_ERROR(
      CUDA_CHECK(c10::cuda::SetDevice(static_cast<c10::DeviceIndex>(device), /*force=*/true)));
  return CudaDeviceScope(previous);
}

CudaDeviceScope::CudaDeviceScope(CudaDeviceScope&& other) noexcept
    : previous_(std::exchange(other.previous_, -1)) {}

CudaDeviceScope::~CudaDeviceScope() {
  // Restoring is best effort: a destructor cannot report, and a failure here means the device
  // is already lost, which the next checked call reports. A previous device without a CUDA
  // context (a fresh thread's default device 0) only becomes current again when it gets one.
  if (previous_ >= 0) (void)c10::cuda::MaybeSetDevice(static_cast<c10::DeviceIndex>(previous_));
}

base::StatusOr<CudaStream> CudaStream::create(int device) {
  ASSIGN_OR_RETURN(CudaDeviceScope scope, CudaDeviceScope::enter(device));
  cudaStream_t s = nullptr;
  RETURN_IF_ERROR(CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)));
  return CudaStream(s, device);
}

CudaStream::CudaStream(CudaStream&& other) noexcept
    : stream_(std::exchange(other.stream_, nullptr)), device_(std::exchange(other.device_, -1)) {}

CudaStream& CudaStream::operator=(CudaStream&& other) noexcept {
  if (this != &other) {
    reset();
    stream_ = std::exchange(other.stream_, nullptr);
    device_ = std::exchange(other.device_, -1);
  }
  return *this;
}

CudaStream::~CudaStream() { reset(); }

void CudaStream::reset() {
  // cudaStreamDestroy returns at once; queued work still completes before the stream goes.
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
  stream_ = nullptr;
}

base::Status CudaStream::synchronize() const { return CUDA_CHECK(cudaStreamSynchronize(stream_)); }

base::StatusOr<CudaEvent> CudaEvent::create(int device, bool timing) {
  ASSIGN_OR_RETURN(CudaDeviceScope scope, CudaDeviceScope::enter(device));
  cudaEvent_t e = nullptr;
  RETURN_IF_ERROR(
      CUDA_CHECK(cudaEventCreateWithFlags(&e, timing ? cudaEventDefault : cudaEventDisableTiming)));
  return CudaEvent(e);
}

base::StatusOr<float> CudaEvent::elapsed_ms(const CudaEvent& start, const CudaEvent& end) {
  RETURN_IF_ERROR(end.synchronize());
  float ms = 0;
  RETURN_IF_ERROR(CUDA_CHECK(cudaEventElapsedTime(&ms, start.event_, end.event_)));
  return ms;
}

CudaEvent::CudaEvent(CudaEvent&& other) noexcept : event_(std::exchange(other.event_, nullptr)) {}

CudaEvent& CudaEvent::operator=(CudaEvent&& other) noexcept {
  if (this != &other) {
    reset();
    event_ = std::exchange(other.event_, nullptr);
  }
  return *this;
}

CudaEvent::~CudaEvent() { reset(); }

void CudaEvent::reset() {
  // Destroying a recorded event whose work is still running is allowed: CUDA releases it later.
  if (event_ != nullptr) cudaEventDestroy(event_);
  event_ = nullptr;
}

base::Status CudaEvent::record(cudaStream_t stream) const {
  return CUDA_CHECK(cudaEventRecord(event_, stream));
}

base::Status CudaEvent::make_wait(cudaStream_t stream) const {
  return CUDA_CHECK(cudaStreamWaitEvent(stream, event_, 0));
}

base::Status CudaEvent::synchronize() const { return CUDA_CHECK(cudaEventSynchronize(event_)); }

base::StatusOr<bool> CudaEvent::done() const {
  const cudaError_t rc = cudaEventQuery(event_);
  if (rc == cudaErrorNotReady) {
    (void)cudaGetLastError();  // "not ready" is a state, not a fault: leave no error behind
    return false;
  }
  RETURN_IF_ERROR(CUDA_CHECK(rc));
  return true;
}

}  // namespace dstrain::sharding
