#include "runtime/metrics.h"

#include "base/fs.h"

#include <sys/resource.h>

#include <cerrno>
#include <cstring>

namespace dstrain::runtime {

base::StatusOr<std::unique_ptr<MetricsWriter>> MetricsWriter::open(const std::string& path) {
  RETURN_IF_ERROR(base::make_dirs(base::parent_dir(path)).with_context(path));
  std::FILE* f = std::fopen(path.c_str(), "a");
  if (f == nullptr) {
    return base::Status::IOError(path + ": cannot open for append: " + std::strerror(errno));
  }
  return std::unique_ptr<MetricsWriter>(new MetricsWriter(f, path));
}

MetricsWriter::~MetricsWriter() { std::fclose(file_); }

base::Status MetricsWriter::write(const nlohmann::json& line) {
  const std::string text = line.dump() + "\n";
  if (std::fwrite(text.data(), 1, text.size(), file_) != text.size() || std::fflush(file_) != 0) {
    return base::Status::IOError(path_ + ": write failed: " + std::strerror(errno));
  }
  return base::Status::Ok();
}

int64_t host_rss_peak_bytes() {
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;  // Linux reports KiB
}

}  // namespace dstrain::runtime
