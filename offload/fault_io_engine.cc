#include "offload/fault_io_engine.h"

#include <algorithm>
#include <cerrno>
#include <map>
#include <string>
#include <unordered_map>
#include <utility>

#include "offload/host_buffer.h"

namespace dstrain::offload {
namespace {

// One block of a transfer: passed to the inner engine (ticket), or failed here (injected).
struct Piece {
  std::optional<IoTicket> ticket;
  base::Status injected;
};

class FaultIoEngine final : public IoEngine {
 public:
  FaultIoEngine(std::unique_ptr<IoEngine> inner, FaultOptions options)
      : inner_(std::move(inner)), options_(std::move(options)) {}

  // Waits for what the inner engine still holds, so no buffer is written after the owner's
  // transfers are gone.
  ~FaultIoEngine() override {
    for (auto& [ticket, pieces] : transfers_) (void)wait_pieces(pieces);
  }

  base::StatusOr<int> open(const std::string& path, bool create) override {
    ASSIGN_OR_RETURN(const int file, inner_->open(path, create));
    paths_[file] = path;
    return file;
  }

  base::Status close(int file) override { return inner_->close(file); }
  base::Status sync(int file) override { return inner_->sync(file); }

  base::StatusOr<IoTicket> submit(IoOp op, int file, int64_t offset, void* buf,
                                  size_t bytes) override {
    // Alignment is the inner engine's to judge: it knows whether it does direct I/O.
    RETURN_IF_ERROR(check_transfer(buf, offset, bytes, /*direct=*/false));
    auto path = paths_.find(file);
    if (path == paths_.end()) {
      return base::Status::InvalidArgument("io engine: no open file with id " +
                                           std::to_string(file));
    }
    std::vector<Piece> pieces;
    char* base = static_cast<char*>(buf);
    for (size_t done = 0, n = 0; done < bytes; done += n) {
      n = std::min(options_.block_bytes, bytes - done);
      const int64_t at = offset + static_cast<int64_t>(done);
      base::StatusOr<Piece> piece = issue(op, file, path->second, at, base + done, n);
      if (!piece.ok()) {
        (void)wait_pieces(pieces);
        return piece.status();
      }
      pieces.push_back(std::move(*piece));
    }
    const IoTicket ticket = next_ticket_++;
    transfers_.emplace(ticket, std::move(pieces));
    return ticket;
  }

  base::Status wait(IoTicket ticket) override {
    auto it = transfers_.find(ticket);
    if (it == transfers_.end()) {
      return base::Status::InvalidArgument("io engine: unknown ticket " + std::to_string(ticket) +
                                           " (never submitted, or already waited for)");
    }
    base::Status status = wait_pieces(it->second);
    transfers_.erase(it);
    return status;
  }

 private:
  // The first fault that matches request number `index` covering [at, at + n), if any.
  const Fault* match(IoOp op, int64_t index, int64_t at, size_t n) const {
    for (const Fault& f : options_.faults) {
      if (f.kind == FaultKind::kEnospc && op != IoOp::kWrite) continue;
      if (f.kind == FaultKind::kShortRead && op != IoOp::kRead) continue;
      if (f.request && *f.request == index) return &f;
      if (f.byte && *f.byte >= at && *f.byte < at + static_cast<int64_t>(n)) return &f;
    }
    return nullptr;
  }

  base::StatusOr<Piece> issue(IoOp op, int file, const std::string& path, int64_t at, char* buf,
                              size_t n) {
    const Fault* fault = match(op, next_request_++, at, n);
    Piece piece;
    if (fault == nullptr) {
      ASSIGN_OR_RETURN(piece.ticket, inner_->submit(op, file, at, buf, n));
      return piece;
    }
    switch (fault->kind) {
      case FaultKind::kEio:
        piece.injected = io_request_error(op, path, at, n, EIO);
        break;
      case FaultKind::kEnospc:
        piece.injected = io_request_error(op, path, at, n, ENOSPC);
        break;
      case FaultKind::kShortRead: {
        const size_t got = n / 2 / kHostAlignment * kHostAlignment;
        if (got > 0) {
          ASSIGN_OR_RETURN(piece.ticket, inner_->submit(op, file, at, buf, got));
        }
        piece.injected = io_short_error(op, path, at, n, got);
        break;
      }
    }
    return piece;
  }

  // Waits for every inner transfer; the error of the first failed block wins.
  base::Status wait_pieces(std::vector<Piece>& pieces) {
    base::Status first;
    for (Piece& p : pieces) {
      base::Status s = p.ticket ? inner_->wait(*p.ticket) : base::Status::Ok();
      p.ticket.reset();
      if (s.ok()) s = p.injected;
      if (first.ok() && !s.ok()) first = std::move(s);
    }
    return first;
  }

  std::unique_ptr<IoEngine> inner_;
  const FaultOptions options_;
  std::map<int, std::string> paths_;  // file id -> path, for error messages
  std::unordered_map<IoTicket, std::vector<Piece>> transfers_;
  IoTicket next_ticket_ = 1;
  int64_t next_request_ = 0;
};

}  // namespace

base::StatusOr<std::unique_ptr<IoEngine>> make_fault_io_engine(std::unique_ptr<IoEngine> inner,
                                                               FaultOptions options) {
  if (inner == nullptr) return base::Status::InvalidArgument("fault io engine: no inner engine");
  if (options.block_bytes == 0) {
    return base::Status::InvalidArgument("fault io engine: block size must be > 0");
  }
  for (const Fault& f : options.faults) {
    if (f.request.has_value() == f.byte.has_value()) {
      return base::Status::InvalidArgument(
          "fault io engine: a fault names either a request number or a byte offset, not " +
          std::string(f.request ? "both" : "neither"));
    }
  }
  return std::unique_ptr<IoEngine>(new FaultIoEngine(std::move(inner), std::move(options)));
}

}  // namespace dstrain::offload
