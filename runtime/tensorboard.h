#pragma once
// TensorBoard event files, encoded here so that no protobuf or TensorFlow is needed: a file is a
// sequence of TFRecord frames, each holding one serialized tensorflow.Event (only the fields that
// scalars need: wall_time, step, file_version, summary.value{tag, simple_value}, and
// session_log.status for restarts).
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace dstrain::runtime {

// CRC-32C (Castagnoli polynomial), the checksum TFRecord frames carry.
uint32_t crc32c(const void* data, size_t n);
// TFRecord stores CRCs rotated and offset so that a CRC of data holding CRCs stays strong.
uint32_t masked_crc32c(const void* data, size_t n);

// One TFRecord frame: length, masked CRC of the length, payload, masked CRC of the payload.
std::string tfrecord_frame(std::string_view payload);

struct Scalar {
  std::string tag;
  float value = 0.0f;  // Summary.Value.simple_value is a float
};

// Serialized Event messages.
std::string encode_file_version_event(double wall_time);
std::string encode_scalars_event(double wall_time, int64_t step,
                                 const std::vector<Scalar>& scalars);
// Event{session_log{status: START}} at `step`: TensorBoard's restart record.
std::string encode_session_start_event(double wall_time, int64_t step);

// Appends scalar events to `<dir>/events.out.tfevents.<unix time>.<hostname>`, the name
// TensorBoard looks for; a resumed run starts a new file in the same directory, which TensorBoard
// reads as one run. Not thread-safe; one writer per directory (rank 0's).
class EventFileWriter {
 public:
  static base::StatusOr<std::unique_ptr<EventFileWriter>> open(const std::string& dir);
  ~EventFileWriter();
  EventFileWriter(const EventFileWriter&) = delete;
  EventFileWriter& operator=(const EventFileWriter&) = delete;

  // One Event holding all `scalars` at `step`, flushed before returning so that TensorBoard sees
  // each step while the run goes on.
  base::Status write_scalars(int64_t step, const std::vector<Scalar>& scalars);
  // TensorBoard's restart record at `first_step`, the first step this run will log. A resumed run
  // repeats the steps after its checkpoint that the interrupted run had already logged; on
  // reading this record TensorBoard's EventAccumulator drops every event it has seen with
  // step >= first_step (those of the earlier files), so each step shows once, as rerun.
  base::Status write_session_start(int64_t first_step);
  const std::string& path() const { return path_; }

 private:
  EventFileWriter(std::FILE* f, std::string path) : file_(f), path_(std::move(path)) {}
  base::Status write_record(std::string_view payload);
  std::FILE* file_;
  std::string path_;
};

}  // namespace dstrain::runtime
