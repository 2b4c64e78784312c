#pragma once
// A tolerance check of two tensors on any device and dtype, shared by the model tests.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

namespace dstrain::runtime {

inline void expect_close(const at::Tensor& a, const at::Tensor& b, double rtol, double atol,
                         const char* what) {
  const at::Tensor x = a.to(at::kCPU, at::kFloat);
  const at::Tensor y = b.to(at::kCPU, at::kFloat);
  EXPECT_TRUE(at::allclose(x, y, rtol, atol))
      << what << ": max abs difference " << (x - y).abs().max().item<double>();
}

}  // namespace dstrain::runtime
