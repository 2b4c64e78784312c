#pragma once
// Gradients written by the ops that use a parameter, in fp32, straight into the engine's gradient
// buffer. Without a sink, autograd forms each weight gradient in the compute dtype, the flat
// buffer's gradient is assembled from them, widened to fp32 and then reduced or added; with one,
// the matrix product that forms a weight gradient writes it (fp32 output from low-precision
// operands) into its place in the buffer: no compute-dtype gradient, no assembly copy, no
// widening pass, and one rounding fewer.
//
// The engine hands a unit one GradSink per parameter whose ParamSpec::grad_sink is set (the unit
// declares it can deliver that gradient); the unit's op then writes it during backward and returns
// no gradient for the parameter. Header-only: base has no LibTorch library of its own.
#include <ATen/ATen.h>
#include <ATen/core/ivalue.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

namespace dstrain::base {

// One unit's flat fp32 gradient buffer for one backward. Its memory is made on first use, so a
// forward holds none. It tracks the element ranges ops have written: the first write of a range
// stores, later ones add; finish() zeroes what no op wrote.
class GradSinkBuffer final : public torch::CustomClassHolder {
 public:
  // `make` returns the flat fp32 tensor when it is first needed. accumulate: that tensor already
  // holds a running sum every write adds to (every range counts as written).
  GradSinkBuffer(std::function<at::Tensor()> make, bool accumulate)
      : make_(std::move(make)), all_written_(accumulate) {}

  struct Slot {
    at::Tensor view;   // fp32, shaped as asked
    bool add = false;  // true: add into it; false: overwrite it
  };

  // Elements [offset, offset + numel(shape)) for one write, marked written. A range written only
  // in part has the rest zeroed first, so the write then adds.
  Slot take(int64_t offset, at::IntArrayRef shape) {
    TORCH_CHECK(!finished_, "GradSinkBuffer: a write after the buffer was handed over");
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    Slot slot;
    slot.view = flat().narrow(0, offset, numel).view(shape);
    if (all_written_) {
      slot.add = true;
      return slot;
    }
    const int64_t covered = covered_in(offset, offset + numel);
    if (covered > 0 && covered < numel) zero_gaps(offset, offset + numel);
    slot.add = covered > 0;
    mark(offset, offset + numel);
    return slot;
  }

  // The whole buffer, with every element no op wrote set to zero, handed over: an autograd node
  // that still holds this object (a loss kept alive) no longer keeps the memory. No write may
  // follow.
  at::Tensor finish() {
    TORCH_CHECK(!finished_, "GradSinkBuffer: finished twice");
    if (!all_written_) zero_gaps(0, flat().numel());
    finished_ = true;
    written_.clear();
    return std::move(flat_);
  }

 private:
  at::Tensor& flat() {
    if (!flat_.defined()) flat_ = make_();
    return flat_;
  }
  int64_t covered_in(int64_t begin, int64_t end) const {
    int64_t n = 0;
    for (const auto& [b, e] : written_)
      n += std::max<int64_t>(0, std::min(e, end) - std::max(b, begin));
    return n;
  }
  void zero_gaps(int64_t begin, int64_t end) {
    int64_t cursor = begin;
    for (const auto& [b, e] : written_) {
      if (e <= cursor || b >= end) continue;
      if (b > cursor) flat().narrow(0, cursor, b - cursor).zero_();
      cursor = std::max(cursor, e);
    }
    if (cursor < end) flat().narrow(0, cursor, end - cursor).zero_();
  }
  void mark(int64_t begin, int64_t end) {
    written_.emplace_back(begin, end);
    std::sort(written_.begin(), written_.end());
    std::vector<std::pair<int64_t, int64_t>> merged;
    for (const auto& r : written_) {
      if (!merged.empty() && r.first <= merged.back().second) {
        merged.back().second = std::max(merged.back().second, r.second);
      } else {
        merged.push_back(r);
      }
    }
    written_ = std::move(merged);
  }

  std::function<at::Tensor()> make_;
  at::Tensor flat_;
  bool all_written_;
  bool finished_ = false;
  std::vector<std::pair<int64_t, int64_t>> written_;  // sorted, disjoint [begin, end)
};

// Where one parameter's gradient goes: `offset` elements into `buffer`. Undefined: autograd
// delivers the gradient.
struct GradSink {
  c10::intrusive_ptr<GradSinkBuffer> buffer;
  int64_t offset = 0;

  bool defined() const { return buffer.defined(); }
  // Whether `next` starts right where this sink's `numel` elements end, in the same buffer (the
  // weights of several projections written by one product).
  bool followed_by(const GradSink& next, int64_t numel) const {
    return defined() && next.buffer.get() == buffer.get() && next.offset == offset + numel;
  }
};

using GradSinks = std::vector<GradSink>;

}  // namespace dstrain::base
