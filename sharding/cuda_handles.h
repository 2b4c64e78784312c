#pragma once
// Owning wrappers for the CUDA runtime handles the NCCL communicator uses: streams, events and the
// calling thread's current device. Built only when CUDA and NCCL are found (sharding/CMakeLists).
#include <cuda_runtime_api.h>

#include "base/status.h"

namespace dstrain::sharding {

// Records the CUDA error name and text with file and line; returns it as an internal error.
base::Status cuda_status(cudaError_t rc, const char* call, const char* file, int line);
#define CUDA_CHECK(call) ::dstrain::sharding::cuda_status((call), #call, __FILE__, __LINE__)

// Makes `device` current for the calling thread and restores the previous device on destruction,
// so a call that must run on the communicator's device leaves the caller's choice untouched.
// Uses LibTorch's notion of the current device, which its own device guards share.
class CudaDeviceScope {
 public:
  static base::StatusOr<CudaDeviceScope> enter(int device);
  ~CudaDeviceScope();
  CudaDeviceScope(CudaDeviceScope&& other) noexcept;
  CudaDeviceScope& operator=(CudaDeviceScope&&) = delete;
  CudaDeviceScope(const CudaDeviceScope&) = delete;
  CudaDeviceScope& operator=(const CudaDeviceScope&) = delete;

 private:
  explicit CudaDeviceScope(int previous) : previous_(previous) {}
  int previous_ = -1;  // -1: moved from, nothing to restore
};

// A stream created with cudaStreamNonBlocking: work on it never serialises implicitly with the
// legacy default stream, only through the events the owner records and waits on.
class CudaStream {
 public:
  static base::StatusOr<CudaStream> create(int device);
  CudaStream() = default;
  ~CudaStream();
  CudaStream(CudaStream&& other) noexcept;
  CudaStream& operator=(CudaStream&& other) noexcept;
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;

  cudaStream_t get() const { return stream_; }
  int device() const { return device_; }
  // Blocks the calling thread until all work queued on the stream is done.
  base::Status synchronize() const;

 private:
  CudaStream(cudaStream_t s, int device) : stream_(s), device_(device) {}
  void reset();
  cudaStream_t stream_ = nullptr;
  int device_ = -1;
};

// An event without timing (cudaEventDisableTiming), the cheap kind used only for ordering, or
// with timing where `timing` asks for it.
class CudaEvent {
 public:
  static base::StatusOr<CudaEvent> create(int device, bool timing = false);
  // Milliseconds between two recorded timing events; blocks until `end` has happened.
  static base::StatusOr<float> elapsed_ms(const CudaEvent& start, const CudaEvent& end);
  CudaEvent() = default;
  ~CudaEvent();
  CudaEvent(CudaEvent&& other) noexcept;
  CudaEvent& operator=(CudaEvent&& other) noexcept;
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;

  cudaEvent_t get() const { return event_; }
  // Captures the work queued on `stream` so far (stream and event on the same device).
  base::Status record(cudaStream_t stream) const;
  // Makes later work on `stream` wait for the captured work, without blocking the host.
  base::Status make_wait(cudaStream_t stream) const;
  // Blocks the calling thread until the captured work is done.
  base::Status synchronize() const;
  // Whether the captured work is done, without blocking.
  base::StatusOr<bool> done() const;

 private:
  explicit CudaEvent(cudaEvent_t e) : event_(e) {}
  void reset();
  cudaEvent_t event_ = nullptr;
};

}  // namespace dstrain::sharding
