#include "sharding/comm_trace.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "base/fs.h"

namespace dstrain::sharding {

const char* comm_op_name(CommOp op) {
  switch (op) {
    case CommOp::kAllReduce:
      return "all_reduce";
    case CommOp::kAllGather:
      return "all_gather";
    case CommOp::kReduceScatter:
      return "reduce_scatter";
    case CommOp::kBroadcast:
      return "broadcast";
    case CommOp::kBarrier:
      return "barrier";
  }
  return "unknown";
}

base::StatusOr<std::shared_ptr<CommTrace>> CommTrace::open(const std::string& path,
                                                           int64_t max_op_bytes) {
  RETURN_IF_ERROR(base::make_dirs(base::parent_dir(path)).with_context(path));
  std::FILE* f = std::fopen(path.c_str(), "a");
  if (f == nullptr) {
    return base::Status::IOError(path + ": cannot open for append: " + std::strerror(errno));
  }
  std::shared_ptr<CommTrace> t(new CommTrace(f, path, max_op_bytes));
  // A resumed run appends: the marker tells its sequence numbers (from 0 again) apart.
  if (std::fputs("start\n", f) < 0 || std::fflush(f) != 0) {
    return base::Status::IOError(path + ": write failed: " + std::strerror(errno));
  }
  return t;
}

CommTrace::~CommTrace() { std::fclose(file_); }

void CommTrace::count(CommOp op, int64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  Totals& t = totals_[static_cast<int>(op)];
  ++t.n;
  t.bytes += bytes;
}

void CommTrace::add_wait(CommOp op, double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  totals_[static_cast<int>(op)].wait_s += seconds;
}

void CommTrace::record(const CommRecord& r,
                       std::initializer_list<std::pair<const char*, double>> times_ms, bool ok) {
  char line[320];
  int n = std::snprintf(line, sizeof line, "seq=%llu op=%s group=%.*s lane=%.*s bytes=%lld",
                        static_cast<unsigned long long>(r.seq), comm_op_name(r.op),
                        static_cast<int>(r.group.size()), r.group.data(),
                        static_cast<int>(r.lane.size()), r.lane.data(),
                        static_cast<long long>(r.bytes));
  for (const auto& [name, ms] : times_ms) {
    if (n > 0 && n < static_cast<int>(sizeof line)) {
      n += std::snprintf(line + n, sizeof line - n, " %s=%.3f", name, ms);
    }
  }
  if (!ok && n > 0 && n < static_cast<int>(sizeof line)) {
    n += std::snprintf(line + n, sizeof line - n, " failed");
  }
  if (n <= 0) return;
  const size_t len = std::min(static_cast<size_t>(n), sizeof line - 1);
  std::lock_guard<std::mutex> lock(mu_);
  if (op_bytes_ >= max_op_bytes_) return;
  op_bytes_ += static_cast<int64_t>(len) + 1;
  // Diagnostics never fail training: a short write shows as a truncated file, nothing more.
  std::fwrite(line, 1, len, file_);
  std::fputc('\n', file_);
  if (op_bytes_ >= max_op_bytes_) {
    std::fprintf(file_, "op lines stop here: %lld bytes written (the bound); summaries go on\n",
                 static_cast<long long>(op_bytes_));
  }
}

base::Status CommTrace::end_step(int64_t step) {
  std::string line = "step=" + std::to_string(step);
  std::lock_guard<std::mutex> lock(mu_);
  for (int i = 0; i < kCommOps; ++i) {
    Totals& t = totals_[i];
    if (t.n == 0 && t.wait_s == 0) continue;
    char part[160];
    std::snprintf(part, sizeof part, " %s:n=%lld,bytes=%lld,wait_s=%.6f",
                  comm_op_name(static_cast<CommOp>(i)), static_cast<long long>(t.n),
                  static_cast<long long>(t.bytes), t.wait_s);
    line += part;
    t = Totals{};
  }
  line += '\n';
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0) {
    return base::Status::IOError(path_ + ": write failed: " + std::strerror(errno));
  }
  return base::Status::Ok();
}

}  // namespace dstrain::sharding
