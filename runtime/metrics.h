#pragma once
// <run.dir>/metrics.jsonl: one JSON object per line, flushed per line, written by rank 0 only.
#include <nlohmann/json.hpp>

#include <cstdio>
#include <memory>
#include <string>

#include "base/status.h"

namespace dstrain::runtime {

class MetricsWriter {
 public:
  // Appends to `path` (a resumed run continues the same file).
  static base::StatusOr<std::unique_ptr<MetricsWriter>> open(const std::string& path);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;

  base::Status write(const nlohmann::json& line);
  const std::string& path() const { return path_; }

 private:
  MetricsWriter(std::FILE* f, std::string path) : file_(f), path_(std::move(path)) {}
  std::FILE* file_;
  std::string path_;
};

// Peak resident set size of this process in bytes (getrusage).
int64_t host_rss_peak_bytes();

}  // namespace dstrain::runtime
