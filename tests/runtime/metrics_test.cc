#include "runtime/metrics.h"

#include <gtest/gtest.h>

#include <sys/stat.h>

#include <fstream>

#include "base/fs.h"
#include "runtime/progress.h"

namespace dstrain::runtime {
namespace {

TEST(Metrics, AppendsOneFlushedJsonLinePerWrite) {
  const std::string dir = "/tmp/dstrain_metrics_" + std::to_string(getpid());
  const std::string path = dir + "/sub/metrics.jsonl";
  {
    auto w = MetricsWriter::open(path);
    ASSERT_TRUE(w.ok()) << w.status().message();
    ASSERT_TRUE((*w)->write({{"step", 1}, {"loss", 2.5}}).ok());
    // Flushed per line: readable before the writer closes.
    std::ifstream in(path);
    std::string line;
    ASSERT_TRUE(std::getline(in, line));
    EXPECT_EQ(nlohmann::json::parse(line)["loss"], 2.5);
  }
  {
    auto w = MetricsWriter::open(path);  // a second run appends
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->write({{"step", 2}}).ok());
  }
  std::ifstream in(path);
  int lines = 0;
  for (std::string line; std::getline(in, line);) ++lines;
  EXPECT_EQ(lines, 2);
  ASSERT_TRUE(base::remove_tree(dir).ok());
  struct stat st {};
  EXPECT_NE(stat(dir.c_str(), &st), 0);
}

TEST(Metrics, UnwritableDirectoryIsAnIoError) {
  auto w = MetricsWriter::open("/proc/dstrain/metrics.jsonl");
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), base::StatusCode::kIOError);
  EXPECT_NE(w.status().message().find("/proc/dstrain/metrics.jsonl"), std::string::npos);
}

TEST(Progress, DurationFormat) {
  EXPECT_EQ(format_duration(0), "0:00");
  EXPECT_EQ(format_duration(75), "1:15");
  EXPECT_EQ(format_duration(3600 + 62), "1:01:02");
}

}  // namespace
}  // namespace dstrain::runtime
