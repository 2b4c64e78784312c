#pragma once
// Errors as values. Library code returns Status / StatusOr<T>; only launch/main turns an error
// into a message and an exit code (interface.md lists the codes).
#include <cassert>
#include <optional>
#include <string>
#include <utility>

namespace dstrain::base {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,  // usage or config error: exit 2
  kBadInput,         // a data, model or checkpoint file is wrong: exit 3
  kDistributed,      // a peer died or a collective failed: exit 4
  kPreempted,        // a signal asked the run to stop after a checkpoint: exit 75
  kIOError,          // the file system refused (ENOSPC, EIO): exit 1
  kInternal,         // a bug or an unexpected library failure: exit 1
};

class [[nodiscard]] Status {
 public:
  Status() = default;
  static Status Ok() { return Status(); }
  static Status InvalidArgument(std::string m) {
    return {StatusCode::kInvalidArgument, std::move(m)};
  }
  static Status BadInput(std::string m) { return {StatusCode::kBadInput, std::move(m)}; }
  static Status Distributed(std::string m) { return {StatusCode::kDistributed, std::move(m)}; }
  static Status Preempted(std::string m) { return {StatusCode::kPreempted, std::move(m)}; }
  static Status IOError(std::string m) { return {StatusCode::kIOError, std::move(m)}; }
  static Status Internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // A copy with `context: ` prepended to the message; the code is kept.
  Status with_context(const std::string& context) const {
    return ok() ? *this : Status(code_, context + ": " + message_);
  }
  std::string to_string() const;

 private:
  Status(StatusCode c, std::string m) : code_(c), message_(std::move(m)) {}
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

// Exit code for a status, as documented in interface.md.
int exit_code(const Status& s);

template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design
  StatusOr(Status status) : status_(std::move(status)) { assert(!status_.ok()); }  // NOLINT
  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  T& value() & {
    assert(ok());
    return *value_;
  }
  const T& value() const& {
    assert(ok());
    return *value_;
  }
  T&& value() && {
    assert(ok());
    return std::move(*value_);
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  Status status_;
  std::optional<T> value_;
};

}  // namespace dstrain::base

#define DSTRAIN_CONCAT_INNER(a, b) a##b
#define DSTRAIN_CONCAT(a, b) DSTRAIN_CONCAT_INNER(a, b)

// Returns the status from the enclosing function when it is an error.
#define RETURN_IF_ERROR(expr)                     \
  do {                                            \
    ::dstrain::base::Status _dstrain_st = (expr); \
    if (!_dstrain_st.ok()) return _dstrain_st;    \
  } while (0)

#define ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                          \
  if (!tmp.ok()) return tmp.status();         \
  lhs = std::move(tmp).value()

// `ASSIGN_OR_RETURN(auto x, f());` declares x from a StatusOr or returns its error.
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL(DSTRAIN_CONCAT(_dstrain_so_, __LINE__), lhs, expr)
