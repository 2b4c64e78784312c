#pragma once
// A counting CPU allocator for tests that measure memory independently of the engine's layout
// code: it wraps LibTorch's default CPU allocator and counts live and peak bytes.
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <atomic>
#include <cstdint>
#include <memory>

namespace dstrain::sharding::testing {

// Live and peak bytes of every CPU allocation made while installed. The counters are shared
// with each allocation's deleter, so tensors may outlive the allocator's installation.
struct ByteCounters {
  std::atomic<int64_t> live{0};
  std::atomic<int64_t> peak{0};
};

class CountingCpuAllocator final : public c10::Allocator {
 public:
  CountingCpuAllocator()
      : base_(c10::GetDefaultCPUAllocator()), counters_(std::make_shared<ByteCounters>()) {}

  c10::DataPtr allocate(size_t n) override {
    // The bookkeeping lives in a header just before the data, so the context is the data pointer
    // itself, as raw_allocate() (oneDNN's scratch buffers) requires.
    c10::DataPtr inner = base_->allocate(n + kHeader);
    char* data = static_cast<char*>(inner.get()) + kHeader;
    const c10::Device device = inner.device();
    const int64_t live =
        counters_->live.fetch_add(static_cast<int64_t>(n)) + static_cast<int64_t>(n);
    int64_t peak = counters_->peak.load();
    while (live > peak && !counters_->peak.compare_exchange_weak(peak, live)) {
    }
    auto* a = new Allocation{std::move(inner), static_cast<int64_t>(n), counters_};
    *reinterpret_cast<Allocation**>(data - kHeader) = a;
    return {data, data, &CountingCpuAllocator::free_allocation, device};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &CountingCpuAllocator::free_allocation; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  int64_t live() const { return counters_->live.load(); }
  int64_t peak() const { return counters_->peak.load(); }
  // Starts a new peak from the bytes live now.
  void reset_peak() { counters_->peak.store(counters_->live.load()); }

 private:
  struct Allocation {
    c10::DataPtr inner;  // frees through the default allocator's deleter
    int64_t bytes;
    std::shared_ptr<ByteCounters> counters;
  };
  static constexpr size_t kHeader = 64;  // keeps the data 64-byte aligned
  static void free_allocation(void* data) {
    auto* a = *reinterpret_cast<Allocation**>(static_cast<char*>(data) - kHeader);
    a->counters->live.fetch_sub(a->bytes);
    delete a;
  }

  c10::Allocator* base_;
  std::shared_ptr<ByteCounters> counters_;
};

// Installs `counting` as LibTorch's CPU allocator for the scope, then puts the default back.
class AllocatorScope {
 public:
  // Above the priority LibTorch registers its own CPU allocator with.
  static constexpr uint8_t kPriority = 200;
  explicit AllocatorScope(c10::Allocator* counting) { c10::SetCPUAllocator(counting, kPriority); }
  ~AllocatorScope() { c10::SetCPUAllocator(c10::GetDefaultCPUAllocator(), kPriority); }
  AllocatorScope(const AllocatorScope&) = delete;
  AllocatorScope& operator=(const AllocatorScope&) = delete;
};

}  // namespace dstrain::sharding::testing
