#pragma once
// <run.dir>/metrics.jsonl: one JSON object per line, flushed per line, written by rank 0 only.
// Every numeric field of a line with a step is also a TensorBoard scalar at that step, in
// <run.dir>/tb/ (runtime/tensorboard.h), so the two never disagree; evaluation scalars are
// tagged eval/loss and eval/perplexity.
#include <nlohmann/json.hpp>

#include <cstdio>
#include <memory>
#include <string>

#include "base/status.h"
#include "runtime/tensorboard.h"

namespace dstrain::runtime {

class MetricsWriter {
 public:
  // Appends to `path` (a resumed run continues the same file) and starts an event file in
  // `<directory of path>/tb`.
  static base::StatusOr<std::unique_ptr<MetricsWriter>> open(const std::string& path);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;

  // The line, then its scalars; both flushed before returning.
  base::Status write(const nlohmann::json& line);
  // A resumed run's first logged step: TensorBoard's restart record, so that the steps the
  // interrupted run logged past its checkpoint are dropped (EventFileWriter::write_session_start).
  // metrics.jsonl keeps every line; its "resume" event line marks the same point.
  base::Status mark_restart(int64_t first_step) { return events_->write_session_start(first_step); }
  const std::string& path() const { return path_; }

 private:
  MetricsWriter(std::FILE* f, std::string path, std::unique_ptr<EventFileWriter> events)
      : file_(f), path_(std::move(path)), events_(std::move(events)) {}
  std::FILE* file_;
  std::string path_;
  std::unique_ptr<EventFileWriter> events_;
};

// The TensorBoard tag of a metrics.jsonl key: the key itself, except eval_loss -> eval/loss and
// eval_ppl -> eval/perplexity.
std::string tensorboard_tag(const std::string& key);

// The TensorBoard scalars of a metrics line: every number but `step` itself, tagged with
// tensorboard_tag(key) (null, strings and booleans are left out).
std::vector<Scalar> scalars_of(const nlohmann::json& line);

// Peak resident set size of this process in bytes (getrusage).
int64_t host_rss_peak_bytes();

}  // namespace dstrain::runtime
