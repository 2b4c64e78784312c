#include "runtime/tensorboard.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <limits>

#include "base/fs.h"
#include "runtime/metrics.h"

namespace dstrain::runtime {
namespace {

std::string bytes(std::initializer_list<int> values) {
  std::string out;
  for (int v : values) out.push_back(static_cast<char>(v));
  return out;
}

TEST(TensorBoard, Crc32cKnownVectors) {
  // RFC 3720 (iSCSI) appendix B.4 and the common check value.
  EXPECT_EQ(crc32c("123456789", 9), 0xe3069283u);
  EXPECT_EQ(crc32c("", 0), 0u);
  const std::string zeros(32, '\0'), ones(32, '\xff');
  EXPECT_EQ(crc32c(zeros.data(), zeros.size()), 0x8a9136aau);
  EXPECT_EQ(crc32c(ones.data(), ones.size()), 0x62a8ab43u);
  std::string ascending;
  for (int i = 0; i < 32; ++i) ascending.push_back(static_cast<char>(i));
  EXPECT_EQ(crc32c(ascending.data(), ascending.size()), 0x46dd794eu);
}

TEST(TensorBoard, MaskedCrcRotatesAndOffsets) {
  // crc 0xe3069283 rotated right by 15 is 0x2507c60d; plus 0xa282ead8.
  EXPECT_EQ(masked_crc32c("123456789", 9), 0xc78ab0e5u);
}

TEST(TensorBoard, ScalarEventWireFormat) {
  // Event{wall_time: 1.0, step: 300, summary{value{tag: "a", simple_value: 1.0}}}, by hand:
  // 0x09 + fixed64 double, 0x10 + varint 300 (ac 02), 0x2a len { 0x0a len { 0x0a 01 'a',
  // 0x15 + fixed32 float } }.
  const std::string want =
      bytes({0x09, 0,    0,    0,    0,    0,    0,   0xf0, 0x3f, 0x10, 0xac, 0x02,
             0x2a, 0x0a, 0x0a, 0x08, 0x0a, 0x01, 'a', 0x15, 0,    0,    0x80, 0x3f});
  EXPECT_EQ(encode_scalars_event(1.0, 300, {{"a", 1.0f}}), want);
}

TEST(TensorBoard, SessionStartEventWireFormat) {
  // Event{wall_time: 1.0, step: 4, session_log{status: START}}, as tensorboard's own event_pb2
  // serialises it: 0x10 04, then field 7 length-delimited (0x3a 02) { 0x08 01 }.
  const std::string want =
      bytes({0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0x10, 0x04, 0x3a, 0x02, 0x08, 0x01});
  EXPECT_EQ(encode_session_start_event(1.0, 4), want);
}

TEST(TensorBoard, FileVersionEventWireFormat) {
  // Step 0 is proto3's default and is left out.
  const std::string want = bytes({0x09, 0, 0, 0, 0, 0, 0, 0, 0x40, 0x1a, 13}) + "brain.Event:2";
  EXPECT_EQ(encode_file_version_event(2.0), want);
}

TEST(TensorBoard, RecordFrameCarriesLengthAndMaskedCrcs) {
  const std::string payload = "123456789";
  const std::string frame = tfrecord_frame(payload);
  ASSERT_EQ(frame.size(), 8 + 4 + payload.size() + 4);
  EXPECT_EQ(frame.substr(0, 8), bytes({9, 0, 0, 0, 0, 0, 0, 0}));
  const uint32_t len_crc = masked_crc32c(frame.data(), 8);
  EXPECT_EQ(frame.substr(8, 4),
            bytes({static_cast<int>(len_crc & 0xff), static_cast<int>((len_crc >> 8) & 0xff),
                   static_cast<int>((len_crc >> 16) & 0xff), static_cast<int>(len_crc >> 24)}));
  EXPECT_EQ(frame.substr(12, payload.size()), payload);
  EXPECT_EQ(frame.substr(12 + payload.size()), bytes({0xe5, 0xb0, 0x8a, 0xc7}));  // 0xc78ab0e5
}

TEST(TensorBoard, ScalarsOfAMetricsLineAreItsNumbersButStep) {
  const nlohmann::json line = {{"step", 4},         {"loss", 2.5},   {"grad_norm", nullptr},
                               {"event", "resume"}, {"tokens", 128}, {"flag", true}};
  const std::vector<Scalar> s = scalars_of(line);
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0].tag, "loss");  // nlohmann orders keys
  EXPECT_EQ(s[0].value, 2.5f);
  EXPECT_EQ(s[1].tag, "tokens");
  EXPECT_EQ(s[1].value, 128.0f);
}

TEST(TensorBoard, EvaluationScalarsHaveTheirOwnSection) {
  const std::vector<Scalar> s = scalars_of({{"step", 9}, {"eval_loss", 2.0}, {"eval_ppl", 7.5}});
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0].tag, "eval/loss");
  EXPECT_EQ(s[0].value, 2.0f);
  EXPECT_EQ(s[1].tag, "eval/perplexity");
  EXPECT_EQ(s[1].value, 7.5f);
}

// Lines as the trainer writes them, read back by TensorBoard's own reader while the writer is
// still open (so each step must already be flushed), and a second writer (a resumed run) adding
// a second event file to the same directory.
TEST(TensorBoard, TensorBoardReadsBackWhatMetricsJsonlSays) {
  const char* python = std::getenv("DSTRAIN_PYTHON");
  if (python == nullptr || *python == '\0')
    GTEST_SKIP() << "DSTRAIN_PYTHON is not set (run under ctest)";
  const std::string dir = "/tmp/dstrain_tboard_" + std::to_string(getpid());
  const std::string check = std::string(python) + " " + DSTRAIN_SOURCE_DIR +
                            "/tests/runtime/tensorboard_check.py " + dir + " 2>&1";
  auto run_check = [&](std::string* output) {
    FILE* pipe = popen(check.c_str(), "r");
    if (pipe == nullptr) return -1;
    std::array<char, 4096> buf;
    for (size_t n; (n = fread(buf.data(), 1, buf.size(), pipe)) > 0;) output->append(buf.data(), n);
    const int status = pclose(pipe);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  ASSERT_TRUE(base::remove_tree(dir).ok());
  {
    auto w = MetricsWriter::open(dir + "/metrics.jsonl");
    ASSERT_TRUE(w.ok()) << w.status().message();
    for (int step = 1; step <= 3; ++step) {
      nlohmann::json line = {
          {"step", step},
          {"loss", 10.0 / step},
          {"lr", 3e-4 * step},
          {"grad_norm", step == 2 ? nlohmann::json(nullptr) : nlohmann::json(0.1 * step)},
          {"tokens", 4096 * step},
          {"tokens_per_s", 12345.678},
          {"step_time_s", 0.33},
          {"skipped_steps", step == 2 ? 1 : 0},
          {"gpu_mem_peak_bytes", int64_t{3} << 33},
          {"host_rss_peak_bytes", int64_t{1} << 31},
          {"comm_wait_s", 0.01}};
      ASSERT_TRUE((*w)->write(line).ok());
    }
    ASSERT_TRUE((*w)->write({{"step", 3}, {"eval_loss", 2.0}, {"eval_ppl", 7.389056}}).ok());
    ASSERT_TRUE(
        (*w)->write({{"step", 3}, {"event", "checkpoint"}, {"path", dir}, {"stall_s", 0.5}}).ok());
    std::string output;
    const int rc = run_check(&output);
    if (rc == 77) {
      ASSERT_TRUE(base::remove_tree(dir).ok());
      GTEST_SKIP() << output;
    }
    ASSERT_EQ(rc, 0) << output;
  }
  {
    auto w = MetricsWriter::open(dir + "/metrics.jsonl");
    ASSERT_TRUE(w.ok()) << w.status().message();
    ASSERT_TRUE(
        (*w)->write({{"step", 3}, {"event", "resume"}, {"path", dir}, {"load_s", 0.25}}).ok());
    ASSERT_TRUE((*w)->write({{"step", 4}, {"loss", 1.5}, {"lr", 1e-4}}).ok());
  }
  std::string output;
  EXPECT_EQ(run_check(&output), 0) << output;
  ASSERT_TRUE(base::remove_tree(dir).ok());
}

// A run logs steps 1..6 with a checkpoint at step 3 and is interrupted; the resumed run starts
// from that checkpoint in the same directory and logs steps 4..6 again, with other values.
// TensorBoard must show each step once, with the resumed values (tensorboard_check.py applies
// the resume line of metrics.jsonl); without the restart record it shows steps 4..6 twice.
TEST(TensorBoard, ResumedRunReplacesTheStepsAfterItsCheckpoint) {
  const char* python = std::getenv("DSTRAIN_PYTHON");
  if (python == nullptr || *python == '\0')
    GTEST_SKIP() << "DSTRAIN_PYTHON is not set (run under ctest)";
  const std::string dir = "/tmp/dstrain_tboard_restart_" + std::to_string(getpid());
  ASSERT_TRUE(base::remove_tree(dir).ok());
  {
    auto w = MetricsWriter::open(dir + "/metrics.jsonl");
    ASSERT_TRUE(w.ok()) << w.status().message();
    for (int step = 1; step <= 6; ++step) {
      ASSERT_TRUE((*w)->write({{"step", step}, {"loss", 10.0 / step}, {"lr", 0.1 * step}}).ok());
      if (step == 3) {
        ASSERT_TRUE(
            (*w)->write({{"step", 3}, {"event", "checkpoint"}, {"path", dir}, {"stall_s", 0.5}})
                .ok());
      }
    }
    ASSERT_TRUE((*w)->write({{"step", 5}, {"eval_loss", 2.0}, {"eval_ppl", 7.389056}}).ok());
  }
  {
    auto w = MetricsWriter::open(dir + "/metrics.jsonl");
    ASSERT_TRUE(w.ok()) << w.status().message();
    // As the trainer does: the resume line, then the restart record at the first step it logs.
    ASSERT_TRUE(
        (*w)->write({{"step", 3}, {"event", "resume"}, {"path", dir}, {"load_s", 0.25}}).ok());
    ASSERT_TRUE((*w)->mark_restart(4).ok());
    for (int step = 4; step <= 7; ++step) {
      ASSERT_TRUE((*w)->write({{"step", step}, {"loss", 20.0 / step}, {"lr", 0.01 * step}}).ok());
    }
  }
  const std::string check = std::string(python) + " " + DSTRAIN_SOURCE_DIR +
                            "/tests/runtime/tensorboard_check.py " + dir + " 2>&1";
  FILE* pipe = popen(check.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  std::array<char, 4096> buf;
  for (size_t n; (n = fread(buf.data(), 1, buf.size(), pipe)) > 0;) output.append(buf.data(), n);
  const int status = pclose(pipe);
  const int rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  ASSERT_TRUE(base::remove_tree(dir).ok());
  if (rc == 77) GTEST_SKIP() << output;
  EXPECT_EQ(rc, 0) << output;
}

TEST(TensorBoard, UnwritableDirectoryIsAnIoError) {
  auto w = EventFileWriter::open("/proc/dstrain/tb");
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), base::StatusCode::kIOError);
}

}  // namespace
}  // namespace dstrain::runtime
