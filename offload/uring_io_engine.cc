#include "offload/uring_io_engine.h"

#include <fcntl.h>
#include <liburing.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "offload/host_buffer.h"

namespace dstrain::offload {
namespace {

constexpr int kMaxQueueDepth = 4096;

// liburing returns -errno; records the call with file and line as an internal error.
base::Status uring_status(int rc, const char* call, const char* file, int line) {
  if (rc >= 0) return base::Status::Ok();
  return base::Status::Internal(std::string(file) + ":" + std::to_string(line) + ": " + call +
                                ": " + errno_text(-rc));
}
#define URING_CHECK(call) uring_status((call), #call, __FILE__, __LINE__)

// Owner of one io_uring instance.
class Ring {
 public:
  static base::StatusOr<std::unique_ptr<Ring>> create(unsigned entries) {
    std::unique_ptr<Ring> ring(new Ring());
    const int rc = io_uring_queue_init(entries, &ring->ring_, 0);
    if (rc == -EPERM || rc == -ENOSYS) {
      return base::Status::Internal("io_uring is disabled on this machine (" + errno_text(-rc) +
                                    "): a kernel setting or a container's seccomp profile");
    }
    RETURN_IF_ERROR(URING_CHECK(rc));
    ring->live_ = true;
    return ring;
  }
  ~Ring() {
    if (live_) io_uring_queue_exit(&ring_);
  }
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;
  io_uring* get() { return &ring_; }

 private:
  Ring() = default;
  io_uring ring_{};
  bool live_ = false;
};

// Owner of a file descriptor.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&&) = delete;
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  // Closes now and returns close()'s errno (0 on success): a deferred write error shows here.
  int close() {
    const int err = fd_ >= 0 && ::close(fd_) != 0 ? errno : 0;
    fd_ = -1;
    return err;
  }

 private:
  int fd_ = -1;
};

struct OpenFile {
  std::string path;
  Fd fd;
  int transfers = 0;  // submitted and not yet waited for
};

struct Transfer {
  IoOp op;
  int file;
  int64_t offset;
  char* buf;
  size_t bytes;
  size_t cut = 0;       // bytes handed out as requests so far
  int unfinished = 0;   // requests handed out and not completed (in flight or to resubmit)
  bool done = false;    // wait() may return
  base::Status status;  // the first error
};

// One block of a transfer, or what remains of it after a partial completion.
struct Request {
  Transfer* transfer;
  int64_t offset;
  char* buf;
  size_t bytes;
};

// Threads: the owner calls the public functions; the reaper thread waits for completions and
// refills the ring. mu_ guards everything below it; the submission queue is filled by whichever
// thread holds mu_, the completion queue is read by the reaper alone (liburing allows one
// submitter and one reaper at a time).
class UringIoEngine final : public IoEngine {
 public:
  UringIoEngine(const IoOptions& options, std::unique_ptr<Ring> ring)
      : options_(options), ring_(std::move(ring)), slots_(options.queue_depth) {
    for (int i = options.queue_depth - 1; i >= 0; --i) free_slots_.push_back(i);
    reaper_ = std::thread([this] { reap_loop(); });
  }

  // Drops what was not submitted and waits for what the kernel holds: it may still write into
  // the owners' buffers until it completes.
  ~UringIoEngine() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
      pending_.clear();
      retry_.clear();
    }
    work_cv_.notify_all();
    reaper_.join();
  }

  base::StatusOr<int> open(const std::string& path, bool create) override {
    const int flags =
        O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0) | (options_.direct ? O_DIRECT : 0);
    Fd fd(::open(path.c_str(), flags, 0644));
    if (fd.get() < 0) {
      const int err = errno;
      if (err == EINVAL && options_.direct) {
        return base::Status::InvalidArgument(
            path +
            ": its file system refuses O_DIRECT (tmpfs before Linux 6.6, some FUSE and "
            "network file systems); put the file on one that takes it or turn direct I/O "
            "off");
      }
      return base::Status::IOError(path + ": cannot open: " + errno_text(err));
    }
    std::lock_guard<std::mutex> lock(mu_);
    files_.push_back(OpenFile{path, std::move(fd)});
    return static_cast<int>(files_.size() - 1);
  }

  base::Status close(int file) override {
    std::lock_guard<std::mutex> lock(mu_);
    RETURN_IF_ERROR(check_file_locked(file));
    OpenFile& f = files_[file];
    if (f.transfers > 0) {
      return base::Status::InvalidArgument(f.path +
                                           ": cannot close: " + std::to_string(f.transfers) +
                                           " transfers not yet waited for");
    }
    if (const int err = f.fd.close()) {
      return base::Status::IOError(f.path + ": close: " + errno_text(err));
    }
    return base::Status::Ok();
  }

  base::StatusOr<IoTicket> submit(IoOp op, int file, int64_t offset, void* buf,
                                  size_t bytes) override {
    RETURN_IF_ERROR(check_transfer(buf, offset, bytes, options_.direct));
    std::lock_guard<std::mutex> lock(mu_);
    RETURN_IF_ERROR(broken_);
    RETURN_IF_ERROR(check_file_locked(file));
    auto t = std::make_unique<Transfer>(Transfer{op, file, offset, static_cast<char*>(buf), bytes});
    t->done = bytes == 0;
    if (!t->done) pending_.push_back(t.get());
    ++files_[file].transfers;
    const IoTicket ticket = next_ticket_++;
    transfers_.emplace(ticket, std::move(t));
    fill_locked();
    return ticket;
  }

  base::Status wait(IoTicket ticket) override {
    std::unique_lock<std::mutex> lock(mu_);
    auto it = transfers_.find(ticket);
    if (it == transfers_.end()) {
      return base::Status::InvalidArgument("io engine: unknown ticket " + std::to_string(ticket) +
                                           " (never submitted, or already waited for)");
    }
    Transfer* t = it->second.get();
    done_cv_.wait(lock, [t] { return t->done; });
    base::Status status = t->status;
    --files_[t->file].transfers;
    transfers_.erase(ticket);
    return status;
  }

  base::Status sync(int file) override {
    int fd = -1;
    std::string path;
    {
      std::lock_guard<std::mutex> lock(mu_);
      RETURN_IF_ERROR(check_file_locked(file));
      fd = files_[file].fd.get();
      path = files_[file].path;
    }
    // Outside the lock: only the owner closes files, and the owner is here.
    if (::fdatasync(fd) != 0)
      return base::Status::IOError(path + ": fdatasync: " + errno_text(errno));
    return base::Status::Ok();
  }

 private:
  base::Status check_file_locked(int file) const {
    if (file < 0 || file >= static_cast<int>(files_.size()) || files_[file].fd.get() < 0) {
      return base::Status::InvalidArgument("io engine: no open file with id " +
                                           std::to_string(file));
    }
    return base::Status::Ok();
  }

  // The next request to put in the ring: a resubmission first (its transfer is the oldest), then
  // the next block of the oldest transfer. Requests of failed transfers are dropped here.
  std::optional<Request> next_request_locked() {
    while (!retry_.empty()) {
      Request r = retry_.front();
      retry_.pop_front();
      if (r.transfer->status.ok()) return r;
      --r.transfer->unfinished;
      settle_locked(*r.transfer);
    }
    if (pending_.empty()) return std::nullopt;
    Transfer* t = pending_.front();
    const size_t n = std::min(options_.block_bytes, t->bytes - t->cut);
    Request r{t, t->offset + static_cast<int64_t>(t->cut), t->buf + t->cut, n};
    t->cut += n;
    ++t->unfinished;
    if (t->cut == t->bytes) pending_.pop_front();
    return r;
  }

  // Puts requests in the ring until queue_depth are in flight or none is left.
  void fill_locked() {
    int queued = 0;
    while (in_flight_ < options_.queue_depth) {
      std::optional<Request> r = next_request_locked();
      if (!r) break;
      io_uring_sqe* sqe = io_uring_get_sqe(ring_->get());
      if (sqe == nullptr) {  // cannot happen: the ring has queue_depth entries; try again later
        retry_.push_front(*r);
        break;
      }
      const int fd = files_[r->transfer->file].fd.get();
      if (r->transfer->op == IoOp::kRead) {
        io_uring_prep_read(sqe, fd, r->buf, static_cast<unsigned>(r->bytes), r->offset);
      } else {
        io_uring_prep_write(sqe, fd, r->buf, static_cast<unsigned>(r->bytes), r->offset);
      }
      const int slot = free_slots_.back();
      free_slots_.pop_back();
      slots_[slot] = *r;
      io_uring_sqe_set_data64(sqe, static_cast<uint64_t>(slot));
      ++in_flight_;
      ++queued;
    }
    if (queued == 0) return;
    int rc;
    do {
      rc = io_uring_submit(ring_->get());
    } while (rc == -EINTR);
    if (rc < 0) {
      break_locked(URING_CHECK(rc));
      return;
    }
    work_cv_.notify_one();
  }

  void fail_locked(Transfer& t, base::Status error) {
    if (t.status.ok()) t.status = std::move(error);
  }

  // Marks a transfer done once nothing of it is in flight or still to submit.
  void settle_locked(Transfer& t) {
    if (!t.status.ok() && t.cut < t.bytes) {  // the rest is not worth submitting
      t.cut = t.bytes;
      pending_.erase(std::remove(pending_.begin(), pending_.end(), &t), pending_.end());
    }
    if (!t.done && t.cut == t.bytes && t.unfinished == 0) {
      t.done = true;
      done_cv_.notify_all();
    }
  }

  void complete_locked(int slot, int res) {
    Request r = slots_[slot];
    free_slots_.push_back(slot);
    --in_flight_;
    Transfer& t = *r.transfer;
    const std::string& path = files_[t.file].path;
    if (res == -EINTR || res == -EAGAIN) {
      retry_.push_front(r);
      return;
    }
    if (res < 0) {
      fail_locked(t, io_request_error(t.op, path, r.offset, r.bytes, -res));
    } else if (static_cast<size_t>(res) < r.bytes) {
      // The kernel may complete part of a request; the rest goes again. Nothing at all means the
      // end of the file (or a full device); under O_DIRECT so does an unaligned partial count,
      // and the rest could not be resubmitted anyway.
      const bool stuck = res == 0 || (options_.direct && res % kHostAlignment != 0);
      if (!stuck) {
        r.offset += res;
        r.buf += res;
        r.bytes -= res;
        retry_.push_front(r);
        return;
      }
      fail_locked(t, io_short_error(t.op, path, r.offset, r.bytes, static_cast<size_t>(res)));
    }
    --t.unfinished;
    settle_locked(t);
  }

  // The ring itself failed: every transfer ends with `error`, and so does every later submit.
  void break_locked(base::Status error) {
    broken_ = error;
    for (auto& [ticket, t] : transfers_) {
      fail_locked(*t, error);
      t->cut = t->bytes;
      t->unfinished = 0;
      t->done = true;
    }
    pending_.clear();
    retry_.clear();
    done_cv_.notify_all();
    work_cv_.notify_all();
  }

  void reap_loop() {
    io_uring* ring = ring_->get();
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      work_cv_.wait(lock, [this] { return in_flight_ > 0 || stopping_ || !broken_.ok(); });
      if (!broken_.ok() || (stopping_ && in_flight_ == 0)) return;
      lock.unlock();
      io_uring_cqe* cqe = nullptr;
      const int rc = io_uring_wait_cqe(ring, &cqe);
      lock.lock();
      // Broken meanwhile by the owner: every transfer has ended, so no completion may touch one.
      if (!broken_.ok()) return;
      if (rc == -EINTR) continue;
      if (rc < 0) {
        break_locked(URING_CHECK(rc));
        return;
      }
      unsigned head;
      unsigned seen = 0;
      io_uring_for_each_cqe(ring, head, cqe) {
        complete_locked(static_cast<int>(io_uring_cqe_get_data64(cqe)), cqe->res);
        ++seen;
      }
      io_uring_cq_advance(ring, seen);
      if (!stopping_) fill_locked();
    }
  }

  const IoOptions options_;
  std::unique_ptr<Ring> ring_;

  std::mutex mu_;
  std::condition_variable work_cv_;  // the reaper waits here while nothing is in flight
  std::condition_variable done_cv_;  // wait() waits here for its transfer
  std::vector<OpenFile> files_;      // indexed by file id; closed files keep their slot
  std::unordered_map<IoTicket, std::unique_ptr<Transfer>> transfers_;
  IoTicket next_ticket_ = 1;
  std::deque<Transfer*> pending_;  // transfers with blocks not yet handed out, oldest first
  std::deque<Request> retry_;      // remainders of partial completions, resubmitted first
  std::vector<Request> slots_;     // in-flight requests, indexed by the SQE's user data
  std::vector<int> free_slots_;
  int in_flight_ = 0;
  bool stopping_ = false;
  base::Status broken_;

  std::thread reaper_;  // last: started once everything above exists
};

}  // namespace

base::StatusOr<std::unique_ptr<IoEngine>> make_uring_io_engine(const IoOptions& options) {
  if (options.queue_depth < 1 || options.queue_depth > kMaxQueueDepth) {
    return base::Status::InvalidArgument("io engine: queue depth must be 1 to " +
                                         std::to_string(kMaxQueueDepth) + ", got " +
                                         std::to_string(options.queue_depth));
  }
  if (options.block_bytes == 0 || options.block_bytes > (1u << 30) ||
      (options.direct && options.block_bytes % kHostAlignment != 0)) {
    return base::Status::InvalidArgument(
        "io engine: block size must be 1 byte to 1 GiB (a multiple of " +
        std::to_string(kHostAlignment) + " for direct I/O), got " +
        std::to_string(options.block_bytes));
  }
  ASSIGN_OR_RETURN(auto ring, Ring::create(static_cast<unsigned>(options.queue_depth)));
  return std::unique_ptr<IoEngine>(new UringIoEngine(options, std::move(ring)));
}

}  // namespace dstrain::offload
