#include "runtime/tensorboard.h"

#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "base/fs.h"

namespace dstrain::runtime {
namespace {

constexpr uint32_t kCrc32cPolynomial = 0x82F63B78;  // Castagnoli, bit-reflected
constexpr uint32_t kCrcMaskDelta = 0xa282ead8;
constexpr char kFileVersion[] = "brain.Event:2";

// Protobuf wire types.
constexpr uint32_t kVarint = 0;
constexpr uint32_t kFixed64 = 1;
constexpr uint32_t kLengthDelimited = 2;
constexpr uint32_t kFixed32 = 5;

// Field numbers of tensorflow.Event, Summary and Summary.Value.
constexpr uint32_t kEventWallTime = 1;
constexpr uint32_t kEventStep = 2;
constexpr uint32_t kEventFileVersion = 3;
constexpr uint32_t kEventSummary = 5;
constexpr uint32_t kEventSessionLog = 7;
constexpr uint32_t kSessionLogStatus = 1;
constexpr uint64_t kSessionLogStart = 1;  // SessionLog.SessionStatus.START
constexpr uint32_t kSummaryValue = 1;
constexpr uint32_t kValueTag = 1;
constexpr uint32_t kValueSimpleValue = 2;

constexpr std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ kCrc32cPolynomial : c >> 1;
    table[i] = c;
  }
  return table;
}
constexpr std::array<uint32_t, 256> kCrc32cTable = make_crc32c_table();

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

// Little-endian whatever the host, as the wire format and TFRecord require.
void put_fixed(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

void put_key(std::string& out, uint32_t field, uint32_t wire_type) {
  put_varint(out, (static_cast<uint64_t>(field) << 3) | wire_type);
}

void put_bytes(std::string& out, uint32_t field, std::string_view bytes) {
  put_key(out, field, kLengthDelimited);
  put_varint(out, bytes.size());
  out.append(bytes.data(), bytes.size());
}

void put_double(std::string& out, uint32_t field, double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  put_key(out, field, kFixed64);
  put_fixed(out, bits, 8);
}

void put_float(std::string& out, uint32_t field, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  put_key(out, field, kFixed32);
  put_fixed(out, bits, 4);
}

std::string event_header(double wall_time, int64_t step) {
  std::string out;
  put_double(out, kEventWallTime, wall_time);
  // proto3 leaves a zero field out.
  if (step != 0) {
    put_key(out, kEventStep, kVarint);
    put_varint(out, static_cast<uint64_t>(step));
  }
  return out;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

uint32_t crc32c(const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint32_t c = 0xffffffffu;
  for (size_t i = 0; i < n; ++i) c = kCrc32cTable[(c ^ p[i]) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

uint32_t masked_crc32c(const void* data, size_t n) {
  const uint32_t c = crc32c(data, n);
  return ((c >> 15) | (c << 17)) + kCrcMaskDelta;
}

std::string tfrecord_frame(std::string_view payload) {
  std::string out;
  put_fixed(out, payload.size(), 8);
  put_fixed(out, masked_crc32c(out.data(), 8), 4);
  out.append(payload.data(), payload.size());
  put_fixed(out, masked_crc32c(payload.data(), payload.size()), 4);
  return out;
}

std::string encode_file_version_event(double wall_time) {
  std::string out = event_header(wall_time, 0);
  put_bytes(out, kEventFileVersion, kFileVersion);
  return out;
}

std::string encode_scalars_event(double wall_time, int64_t step,
                                 const std::vector<Scalar>& scalars) {
  std::string summary;
  for (const Scalar& s : scalars) {
    std::string value;
    put_bytes(value, kValueTag, s.tag);
    put_float(value, kValueSimpleValue, s.value);
    put_bytes(summary, kSummaryValue, value);
  }
  std::string out = event_header(wall_time, step);
  put_bytes(out, kEventSummary, summary);
  return out;
}

std::string encode_session_start_event(double wall_time, int64_t step) {
  std::string session_log;
  put_key(session_log, kSessionLogStatus, kVarint);
  put_varint(session_log, kSessionLogStart);
  std::string out = event_header(wall_time, step);
  put_bytes(out, kEventSessionLog, session_log);
  return out;
}

base::StatusOr<std::unique_ptr<EventFileWriter>> EventFileWriter::open(const std::string& dir) {
  RETURN_IF_ERROR(base::make_dirs(dir));
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) std::strcpy(host, "localhost");
  const double wall_time = now_seconds();
  const std::string path =
      dir + "/events.out.tfevents." + std::to_string(static_cast<int64_t>(wall_time)) + "." + host;
  // Two opens within one second share a name: appending keeps both runs' records valid.
  std::FILE* f = std::fopen(path.c_str(), "ab");
  if (f == nullptr) {
    return base::Status::IOError(path + ": cannot open for append: " + std::strerror(errno));
  }
  std::unique_ptr<EventFileWriter> w(new EventFileWriter(f, path));
  RETURN_IF_ERROR(w->write_record(encode_file_version_event(wall_time)));
  return w;
}

EventFileWriter::~EventFileWriter() { std::fclose(file_); }

base::Status EventFileWriter::write_scalars(int64_t step, const std::vector<Scalar>& scalars) {
  return write_record(encode_scalars_event(now_seconds(), step, scalars));
}

base::Status EventFileWriter::write_session_start(int64_t first_step) {
  return write_record(encode_session_start_event(now_seconds(), first_step));
}

base::Status EventFileWriter::write_record(std::string_view payload) {
  const std::string frame = tfrecord_frame(payload);
  if (std::fwrite(frame.data(), 1, frame.size(), file_) != frame.size() ||
      std::fflush(file_) != 0) {
    return base::Status::IOError(path_ + ": write failed: " + std::strerror(errno));
  }
  return base::Status::Ok();
}

}  // namespace dstrain::runtime
