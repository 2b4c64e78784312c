#include "base/status.h"

#include <gtest/gtest.h>

namespace dstrain::base {
namespace {

StatusOr<int> half(int x) {
  if (x % 2) return Status::InvalidArgument("odd: " + std::to_string(x));
  return x / 2;
}

Status quarter(int x, int* out) {
  ASSIGN_OR_RETURN(int h, half(x));
  ASSIGN_OR_RETURN(*out, half(h));
  return Status::Ok();
}

TEST(Status, ExitCodesAreTheDocumentedOnes) {
  EXPECT_EQ(exit_code(Status::Ok()), 0);
  EXPECT_EQ(exit_code(Status::InvalidArgument("x")), 2);
  EXPECT_EQ(exit_code(Status::BadInput("x")), 3);
  EXPECT_EQ(exit_code(Status::Distributed("x")), 4);
  EXPECT_EQ(exit_code(Status::Preempted("x")), 75);
  EXPECT_EQ(exit_code(Status::IOError("x")), 1);
  EXPECT_EQ(exit_code(Status::Internal("x")), 1);
}

TEST(Status, MacrosPropagateTheFirstError) {
  int out = 0;
  EXPECT_TRUE(quarter(8, &out).ok());
  EXPECT_EQ(out, 2);
  Status st = quarter(6, &out);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message(), "odd: 3");
  EXPECT_EQ(st.with_context("unit 2").message(), "unit 2: odd: 3");
  EXPECT_TRUE(Status::Ok().with_context("x").ok());
}

}  // namespace
}  // namespace dstrain::base
