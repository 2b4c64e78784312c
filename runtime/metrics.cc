#include "runtime/metrics.h"

#include "base/fs.h"

#include <sys/resource.h>

#include <cerrno>
#include <cstring>

namespace dstrain::runtime {

base::StatusOr<std::unique_ptr<MetricsWriter>> MetricsWriter::open(const std::string& path) {
  RETURN_IF_ERROR(base::make_dirs(base::parent_dir(path)).with_context(path));
  ASSIGN_OR_RETURN(std::unique_ptr<EventFileWriter> events,
                   EventFileWriter::open(base::parent_dir(path) + "/tb"));
  std::FILE* f = std::fopen(path.c_str(), "a");
  if (f == nullptr) {
    return base::Status::IOError(path + ": cannot open for append: " + std::strerror(errno));
  }
  return std::unique_ptr<MetricsWriter>(new MetricsWriter(f, path, std::move(events)));
}

MetricsWriter::~MetricsWriter() { std::fclose(file_); }

base::Status MetricsWriter::write(const nlohmann::json& line) {
  const std::string text = line.dump() + "\n";
  if (std::fwrite(text.data(), 1, text.size(), file_) != text.size() || std::fflush(file_) != 0) {
    return base::Status::IOError(path_ + ": write failed: " + std::strerror(errno));
  }
  const auto step = line.find("step");
  if (step == line.end() || !step->is_number_integer()) return base::Status::Ok();
  const std::vector<Scalar> scalars = scalars_of(line);
  if (scalars.empty()) return base::Status::Ok();
  return events_->write_scalars(step->get<int64_t>(), scalars);
}

std::string tensorboard_tag(const std::string& key) {
  // TensorBoard groups tags by their prefix up to '/': validation gets a section of its own.
  if (key == "eval_loss") return "eval/loss";
  if (key == "eval_ppl") return "eval/perplexity";
  return key;
}

std::vector<Scalar> scalars_of(const nlohmann::json& line) {
  std::vector<Scalar> out;
  for (const auto& [key, value] : line.items()) {
    if (key == "step" || !value.is_number()) continue;
    out.push_back({tensorboard_tag(key), value.get<float>()});
  }
  return out;
}

int64_t host_rss_peak_bytes() {
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;  // Linux reports KiB
}

}  // namespace dstrain::runtime
