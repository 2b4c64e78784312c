#pragma once
// Communication diagnostics (log.level = "debug"): one line per collective and one summary line
// per training step, in a per-rank text file (<run.dir>/comm/rank<R>.log). Communicators receive
// a trace through CommOptions; without one (log.level = "info") they do no tracing work at all.
// One trace may be shared by every communicator of a rank (host MPI, NCCL, hybrid groups): each
// names its group and lane on its lines, and the step summary covers all of them.
//
// Line formats (one record per line, key=value, appended; a run writes "start" first):
//   seq=12 op=all_gather group=world lane=gather bytes=4096 wait_ms=0.031
//   seq=3 op=all_reduce group=world lane=mpi bytes=32 queue_ms=0.004 run_ms=0.118
//   step=7 all_gather:n=24,bytes=98304,wait_s=0.0012 all_reduce:n=2,bytes=40,wait_s=0.0001
// MPI lines are written when the collective completes, with host times on the communication
// thread (queued, then inside MPI); NCCL lines when the wait timing is read (take_wait_seconds),
// with the GPU time the caller's stream stood still at Work::wait(), so only waited operations
// get a line. Summary counts and bytes cover every operation issued since the previous summary;
// wait_s is the caller's wait, as in take_wait_seconds(). bytes: the operation's full buffer.
#include <array>
#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>

#include "base/status.h"

namespace dstrain::sharding {

enum class CommOp { kAllReduce = 0, kAllGather, kReduceScatter, kBroadcast, kBarrier };
inline constexpr int kCommOps = 5;
const char* comm_op_name(CommOp op);

// What a line says about one operation; the strings are only read during the call.
struct CommRecord {
  CommOp op = CommOp::kAllReduce;
  std::string_view group;
  std::string_view lane;
  uint64_t seq = 0;
  int64_t bytes = 0;
};

class CommTrace {
 public:
  // Op lines stop after this many bytes of them (one line says so); summaries go on. Bounds the
  // file of a long run at about 100 bytes per collective.
  static constexpr int64_t kDefaultMaxOpBytes = int64_t{64} << 20;
  // Appends to `path` (creating its directory), starting with a "start" line.
  static base::StatusOr<std::shared_ptr<CommTrace>> open(const std::string& path,
                                                         int64_t max_op_bytes = kDefaultMaxOpBytes);
  ~CommTrace();
  CommTrace(const CommTrace&) = delete;
  CommTrace& operator=(const CommTrace&) = delete;

  // All methods are thread-safe: MPI lines come from the communication thread, the rest from the
  // training thread.
  // An operation was issued: counted in the next summary.
  void count(CommOp op, int64_t bytes);
  // The caller spent `seconds` waiting for an operation of kind `op`.
  void add_wait(CommOp op, double seconds);
  // One op line: the record, then each (name, milliseconds); " failed" when `ok` is false.
  void record(const CommRecord& r, std::initializer_list<std::pair<const char*, double>> times_ms,
              bool ok = true);
  // The summary line of training step `step` (1-based, as in metrics.jsonl); resets the counts
  // and flushes the file, so a crash loses at most the current step's lines.
  base::Status end_step(int64_t step);
  const std::string& path() const { return path_; }

 private:
  struct Totals {
    int64_t n = 0;
    int64_t bytes = 0;
    double wait_s = 0;
  };
  CommTrace(std::FILE* f, std::string path, int64_t max_op_bytes)
      : file_(f), path_(std::move(path)), max_op_bytes_(max_op_bytes) {}

  std::mutex mu_;
  std::FILE* file_;  // guarded by mu_
  std::string path_;
  int64_t max_op_bytes_;
  int64_t op_bytes_ = 0;                 // guarded by mu_
  std::array<Totals, kCommOps> totals_;  // guarded by mu_
};

// How a communicator is made: its collective timeout and, at log.level = "debug", where its
// diagnostics go and the group name its lines carry.
struct CommOptions {
  double timeout_s = 0;              // run.collective_timeout_s; 0: wait forever
  std::shared_ptr<CommTrace> trace;  // null: no diagnostics
  std::string group = "world";
};

}  // namespace dstrain::sharding
