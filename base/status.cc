#include "base/status.h"

namespace dstrain::base {

std::string Status::to_string() const {
  switch (code_) {
    case StatusCode::kOk:
      return "OK";
    case StatusCode::kInvalidArgument:
      return "invalid argument: " + message_;
    case StatusCode::kBadInput:
      return "bad input: " + message_;
    case StatusCode::kDistributed:
      return "distributed fault: " + message_;
    case StatusCode::kPreempted:
      return "preempted: " + message_;
    case StatusCode::kIOError:
      return "I/O error: " + message_;
    case StatusCode::kInternal:
      return "internal error: " + message_;
  }
  return message_;
}

int exit_code(const Status& s) {
  switch (s.code()) {
    case StatusCode::kOk:
      return 0;
    case StatusCode::kInvalidArgument:
      return 2;
    case StatusCode::kBadInput:
      return 3;
    case StatusCode::kDistributed:
      return 4;
    case StatusCode::kPreempted:
      return 75;
    case StatusCode::kIOError:
    case StatusCode::kInternal:
      return 1;
  }
  return 1;
}

}  // namespace dstrain::base
