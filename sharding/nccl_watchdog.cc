// NcclCommunicator's guards against a dead or stopped peer (sharding/nccl_communicator.h): the
// watchdog thread, which polls the communicators and aborts them, and the monitor thread, which
// makes no CUDA or NCCL call and ends the process when the watchdog or the main thread is held
// in a CUDA call.
#include <pthread.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "sharding/nccl_communicator.h"

namespace dstrain::sharding {
namespace {

constexpr auto kWatchInterval = std::chrono::milliseconds(500);
// How long the monitor lets a blocked watchdog go on beyond the timeout, and a process that a
// reported fault should have ended (measured: the main thread can stay in a stream
// synchronisation after ncclCommAbort).
constexpr double kMonitorGraceS = 15;
constexpr double kFaultGraceS = 5;

int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void name_this_thread(const char* name) { pthread_setname_np(pthread_self(), name); }

// Ends the process from a thread that cannot trust the others: says why, asks MPI to end every
// rank (on a thread of its own, as MPI_Abort itself can wait), and exits here regardless if the
// process still runs a while later. Exit code 4, a distributed fault's (interface.md).
[[noreturn]] void end_process(const std::string& why) {
  const int code = base::exit_code(base::Status::Distributed(why));
  std::fprintf(stderr, "dstrain: %s; ending the process (exit %d)\n", why.c_str(), code);
  std::fflush(stdout);
  std::fflush(stderr);
  std::thread([code] { MPI_Abort(MPI_COMM_WORLD, code); }).detach();
  std::this_thread::sleep_for(std::chrono::seconds(10));
  std::_Exit(code);
}

}  // namespace

void NcclCommunicator::start_watchdog() {
  watch_round_ns_ = steady_ns();
  watchdog_ = std::thread([this] { watch(); });
  monitor_ = std::thread([this] { monitor(); });
}

void NcclCommunicator::fault_locked(base::Status fault) {
  int64_t none = 0;
  fault_ns_.compare_exchange_strong(none, steady_ns());
  // Said here: a watchdog's fault reaches the issuing thread only at its next operation.
  std::fprintf(stderr, "dstrain: %s; aborting the NCCL communicators\n", fault.message().c_str());
  abort_locked(std::move(fault));
}

void NcclCommunicator::stop_watchdog() {
  if (watchdog_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(watch_mu_);
      stopping_ = true;
    }
    watch_cv_.notify_all();
    watchdog_.join();  // a blocked watchdog keeps the monitor running, which ends the process
  }
  if (monitor_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(monitor_mu_);
      monitor_stopping_ = true;
    }
    monitor_cv_.notify_all();
    monitor_.join();
  }
}

void NcclCommunicator::watch() {
  name_this_thread("dstrain-ncclwd");
  std::unique_lock<std::mutex> lock(watch_mu_);
  while (!watch_cv_.wait_for(lock, kWatchInterval, [this] { return stopping_; })) {
    base::Status fault = find_fault();
    watch_round_ns_ = steady_ns();
    if (fault.ok()) continue;
    std::lock_guard<std::mutex> guard(mu_);
    fault_locked(std::move(fault));
    return;
  }
}

void NcclCommunicator::monitor() {
  name_this_thread("dstrain-ncclmon");
  std::unique_lock<std::mutex> lock(monitor_mu_);
  while (
      !monitor_cv_.wait_for(lock, std::chrono::seconds(1), [this] { return monitor_stopping_; })) {
    const int64_t now = steady_ns();
    const int64_t fault = fault_ns_.load();
    const std::string rank = "rank " + std::to_string(rank_) + ": ";
    if (fault != 0) {
      if ((now - fault) * 1e-9 > kFaultGraceS) {
        end_process(rank + "still running " + std::to_string(static_cast<int>(kFaultGraceS)) +
                    " s after an NCCL fault was reported (a CUDA call waits for a dead peer)");
      }
      continue;
    }
    const double blocked = (now - watch_round_ns_.load()) * 1e-9;
    if (blocked > timeout_s_ + kMonitorGraceS) {
      std::string oldest;
      {
        std::lock_guard<std::mutex> guard(oldest_mu_);
        oldest = oldest_.empty() ? "none seen" : oldest_;
      }
      end_process(rank + "the NCCL watchdog has been blocked for " +
                  std::to_string(static_cast<int>(blocked)) +
                  " s inside a CUDA or NCCL call (a peer rank died or stopped); oldest unfinished "
                  "operation: " +
                  oldest);
    }
  }
}

base::Status NcclCommunicator::find_fault() {
  std::lock_guard<std::mutex> lock(mu_);
  if (aborted_) return base::Status::Ok();
  const auto now = std::chrono::steady_clock::now();
  RETURN_IF_ERROR(async_errors_locked());
  const InFlight* first = nullptr;  // the oldest of all, for the monitor's message
  base::Status overdue = base::Status::Ok();
  for (const Lane& l : lanes_) {
    if (l.in_flight.empty()) continue;
    const InFlight& oldest = l.in_flight.front();
    if (first == nullptr || oldest.issued < first->issued) first = &oldest;
    ASSIGN_OR_RETURN(const bool done, oldest.done->done());
    const double waited = std::chrono::duration<double>(now - oldest.issued).count();
    if (!done && waited > timeout_s_ && overdue.ok()) {
      overdue = base::Status::Distributed(
          oldest.tag + " did not complete within " + std::to_string(static_cast<int>(timeout_s_)) +
          " s: a peer rank died, stopped or fell far behind (run.collective_timeout_s)");
    }
  }
  std::lock_guard<std::mutex> guard(oldest_mu_);
  oldest_ = first == nullptr ? "" : first->tag;
  return overdue;
}

base::Status NcclCommunicator::check_async_errors() const {
  std::lock_guard<std::mutex> lock(mu_);
  return async_errors_locked();
}

base::Status NcclCommunicator::async_errors_locked() const {
  for (const Lane& l : lanes_) {
    RETURN_IF_ERROR(l.comm.async_error().with_context("rank " + std::to_string(rank_) +
                                                      ": NCCL communicator " + l.name));
  }
  return base::Status::Ok();
}

}  // namespace dstrain::sharding
