#include "runtime/hf/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "tests/runtime/hf/temp_dir.h"

namespace dstrain::runtime::hf {
namespace {

using base::StatusCode;

TEST(DtypeSize, KnownAndUnknown) {
  EXPECT_EQ(dtype_size("F64"), 8u);
  EXPECT_EQ(dtype_size("F32"), 4u);
  EXPECT_EQ(dtype_size("BF16"), 2u);
  EXPECT_EQ(dtype_size("F16"), 2u);
  EXPECT_EQ(dtype_size("I64"), 8u);
  EXPECT_EQ(dtype_size("BOOL"), 1u);
  EXPECT_EQ(dtype_size("F8_E4M3"), 1u);
  EXPECT_EQ(dtype_size("F8_E5M2"), 1u);
  EXPECT_EQ(dtype_size("f32"), 0u);
  EXPECT_EQ(dtype_size("C64"), 0u);
  EXPECT_EQ(dtype_size(""), 0u);
}

std::string bytes_of(const void* p, size_t n) {
  return std::string(static_cast<const char*>(p), n);
}

TEST(Safetensors, WriteThenReadRoundTrip) {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  std::vector<float> w(6);
  std::iota(w.begin(), w.end(), -2.5f);
  const std::vector<uint16_t> b = {0x3f80, 0xbf80, 0x7f80, 0x0001};
  const std::vector<uint8_t> u = {1, 2, 3};
  ASSERT_TRUE(write_safetensors(path,
                                {{"z.weight", "F32", {2, 3}, w.data(), w.size() * 4},
                                 {"a.bias", "BF16", {4}, b.data(), b.size() * 2},
                                 {"empty", "I64", {0, 7}, nullptr, 0},
                                 {"m.mask", "U8", {3}, u.data(), u.size()}},
                                {{"format", "pt"}})
                  .ok());
  EXPECT_NE(access((path + ".tmp").c_str(), F_OK), 0) << "temporary file left behind";

  auto f = SafetensorsFile::open(path);
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(f->path(), path);
  EXPECT_EQ(f->metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
  ASSERT_EQ(f->tensors().size(), 4u);
  // Written in name order; the empty tensor occupies no bytes and sorts with its offset.
  for (size_t i = 1; i < f->tensors().size(); ++i) {
    EXPECT_LE(f->tensors()[i - 1].end, f->tensors()[i].begin);
  }
  EXPECT_EQ(f->tensors().front().name, "a.bias");
  EXPECT_EQ(f->tensors().front().begin % 8, 0u) << "data section must be 8-byte aligned";
  EXPECT_EQ(f->tensors().back().end, f->file_size());

  const TensorInfo* z = f->find("z.weight");
  ASSERT_NE(z, nullptr);
  EXPECT_EQ(z->dtype, "F32");
  EXPECT_EQ(z->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(z->nbytes(), 24u);
  std::vector<float> got(6);
  ASSERT_TRUE(f->read(*z, 0, z->nbytes(), got.data()).ok());
  EXPECT_EQ(got, w);

  const TensorInfo* a = f->find("a.bias");
  ASSERT_NE(a, nullptr);
  std::vector<uint16_t> got_b(4);
  ASSERT_TRUE(f->read(*a, 0, a->nbytes(), got_b.data()).ok());
  EXPECT_EQ(got_b, b);

  const TensorInfo* e = f->find("empty");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->shape, (std::vector<int64_t>{0, 7}));
  EXPECT_EQ(e->nbytes(), 0u);
  EXPECT_TRUE(f->read(*e, 0, 0, nullptr).ok());
  EXPECT_EQ(f->find("missing"), nullptr);

  // Moving keeps the descriptor usable.
  SafetensorsFile moved = std::move(f).value();
  std::vector<uint8_t> got_u(3);
  ASSERT_TRUE(moved.read(*moved.find("m.mask"), 0, 3, got_u.data()).ok());
  EXPECT_EQ(got_u, u);
}

TEST(Safetensors, RewriteReplacesFile) {
  TempDir dir;
  const std::string path = dir.file("x.safetensors");
  const float one = 1.0f;
  const double two = 2.0;
  ASSERT_TRUE(write_safetensors(path, {{"t", "F32", {1}, &one, 4}}, {}).ok());
  ASSERT_TRUE(write_safetensors(path, {{"t", "F64", {}, &two, 8}}, {}).ok());
  auto f = SafetensorsFile::open(path);
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_TRUE(f->metadata().empty());
  ASSERT_EQ(f->tensors().size(), 1u);
  EXPECT_EQ(f->tensors()[0].dtype, "F64");
  EXPECT_TRUE(f->tensors()[0].shape.empty());
  double got = 0;
  ASSERT_TRUE(f->read(f->tensors()[0], 0, 8, &got).ok());
  EXPECT_EQ(got, 2.0);
}

TEST(Safetensors, ByteRangeRead) {
  TempDir dir;
  const std::string path = dir.file("r.safetensors");
  std::vector<int32_t> v(100);
  std::iota(v.begin(), v.end(), 1000);
  const std::vector<uint8_t> pad = {9, 9, 9};
  ASSERT_TRUE(write_safetensors(
                  path,
                  {{"a", "U8", {3}, pad.data(), 3}, {"b", "I32", {10, 10}, v.data(), v.size() * 4}},
                  {})
                  .ok());
  auto f = SafetensorsFile::open(path);
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  const TensorInfo* b = f->find("b");
  ASSERT_NE(b, nullptr);
  // Row 3..5 of the 10x10 matrix, as a rank keeping that slice would read it.
  std::vector<int32_t> rows(20);
  ASSERT_TRUE(f->read(*b, 3 * 10 * 4, rows.size() * 4, rows.data()).ok());
  for (size_t i = 0; i < rows.size(); ++i) EXPECT_EQ(rows[i], v[30 + i]);
  // The last byte alone.
  uint8_t last = 0;
  ASSERT_TRUE(f->read(*b, b->nbytes() - 1, 1, &last).ok());
  int32_t tail = v.back();
  EXPECT_EQ(last, reinterpret_cast<const uint8_t*>(&tail)[3]);

  const base::Status past_end = f->read(*b, b->nbytes() - 4, 8, rows.data());
  EXPECT_EQ(past_end.code(), StatusCode::kInternal);
  EXPECT_NE(past_end.message().find(path), std::string::npos) << past_end.message();
  EXPECT_EQ(f->read(*b, b->nbytes() + 1, 0, rows.data()).code(), StatusCode::kInternal);
  EXPECT_EQ(f->read(*b, 8, ~0ull, rows.data()).code(), StatusCode::kInternal);
}

TEST(Safetensors, ReadOfFileTruncatedAfterOpenIsBadInput) {
  TempDir dir;
  const std::string path = dir.file("t.safetensors");
  std::vector<float> v(64, 1.0f);
  ASSERT_TRUE(write_safetensors(path, {{"w", "F32", {64}, v.data(), 256}}, {}).ok());
  auto f = SafetensorsFile::open(path);
  ASSERT_TRUE(f.ok());
  ASSERT_EQ(truncate(path.c_str(), static_cast<off_t>(f->file_size() - 100)), 0);
  const base::Status st = f->read(*f->find("w"), 0, 256, v.data());
  EXPECT_EQ(st.code(), StatusCode::kBadInput);
  EXPECT_NE(st.message().find(path), std::string::npos) << st.message();
}

TEST(Safetensors, WriterRejectsMalformedRequests) {
  TempDir dir;
  const std::string path = dir.file("w.safetensors");
  const float x[4] = {};
  auto expect_rejected = [&](const std::vector<TensorData>& tensors, const std::string& what) {
    const base::Status st = write_safetensors(path, tensors, {});
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << what << ": " << st.to_string();
    EXPECT_NE(st.message().find(path), std::string::npos) << st.message();
    EXPECT_NE(access(path.c_str(), F_OK), 0) << what;
  };
  expect_rejected({{"a", "F32", {4}, x, 16}, {"a", "F32", {4}, x, 16}}, "duplicate");
  expect_rejected({{"a", "Q4", {4}, x, 16}}, "dtype");
  expect_rejected({{"a", "F32", {4}, x, 12}}, "size");
  expect_rejected({{"a", "F32", {-4}, x, 16}}, "negative");
  expect_rejected({{"__metadata__", "F32", {4}, x, 16}}, "reserved");
  expect_rejected({{"a", "F32", {4}, nullptr, 16}}, "null data");
  const base::Status no_dir =
      write_safetensors(dir.file("no/such/dir.safetensors"), {{"a", "F32", {4}, x, 16}}, {});
  EXPECT_EQ(no_dir.code(), StatusCode::kIOError);
}

// One hand-crafted bad file per validation rule.
struct BadFile {
  const char* label;
  std::string bytes;   // whole file
  const char* expect;  // substring of the message besides the path
};

std::string file_with(const std::string& header, size_t data_bytes) {
  return u64_le(header.size()) + header + std::string(data_bytes, '\xab');
}

std::vector<BadFile> bad_files() {
  const std::string f32_4 = R"("dtype":"F32","shape":[4])";
  return {
      {"empty", "", "too short"},
      {"short", "abcd", "too short"},
      {"header_past_eof", u64_le(1000) + "{}", "exceeds the file size"},
      {"header_over_limit", u64_le(200ull * 1000 * 1000) + std::string(64, ' '),
       "exceeds the limit"},
      {"bad_json", file_with(R"({"a": {"dtype": "F32",)", 0), "invalid JSON"},
      {"not_object", file_with("[1, 2]", 0), "expected an object"},
      {"unknown_dtype", file_with(R"({"a":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}})", 8),
       "tensor a: unsupported dtype \"C64\""},
      {"missing_dtype", file_with(R"({"a":{"shape":[1],"data_offsets":[0,4]}})", 4), "tensor a"},
      {"negative_dim", file_with(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4),
       "non-negative integer"},
      {"float_dim", file_with(R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4),
       "non-negative integer"},
      {"shape_not_list", file_with(R"({"a":{"dtype":"F32","shape":4,"data_offsets":[0,16]}})", 16),
       "tensor a"},
      {"offsets_three", file_with(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})", 4),
       "data_offsets"},
      {"begin_after_end", file_with(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}})", 4),
       "begin > end"},
      {"size_mismatch",
       file_with(R"({"model.norm.weight":{"dtype":"F32","shape":[64],"data_offsets":[0,128]}})",
                 128),
       "tensor model.norm.weight: shape [64] x F32 needs 256 bytes, offsets give 128"},
      {"shape_overflow",
       file_with(R"({"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
                 8),
       "overflows"},
      {"gap",
       file_with("{\"a\":{" + f32_4 + ",\"data_offsets\":[0,16]},\"b\":{" + f32_4 +
                     ",\"data_offsets\":[20,36]}}",
                 36),
       "tensor b: data starts at 20, leaving a gap"},
      {"gap_at_start", file_with("{\"a\":{" + f32_4 + ",\"data_offsets\":[8,24]}}", 24), "gap"},
      {"overlap",
       file_with("{\"a\":{" + f32_4 + ",\"data_offsets\":[0,16]},\"b\":{" + f32_4 +
                     ",\"data_offsets\":[8,24]}}",
                 24),
       "tensor b: data [8, 24) overlaps tensor a"},
      {"duplicate_name",
       file_with("{\"a\":{" + f32_4 + ",\"data_offsets\":[0,16]},\"a\":{" + f32_4 +
                     ",\"data_offsets\":[16,32]}}",
                 32),
       "key \"a\" appears twice"},
      {"trailing_bytes", file_with("{\"a\":{" + f32_4 + ",\"data_offsets\":[0,16]}}", 20),
       "cover 16 bytes of a data section of 20"},
      {"truncated_data", file_with("{\"a\":{" + f32_4 + ",\"data_offsets\":[0,16]}}", 10),
       "run past the data section of 10 bytes"},
      {"metadata_not_strings", file_with(R"({"__metadata__":{"format":1}})", 0),
       "\"__metadata__\" entry \"format\""},
      {"metadata_not_object", file_with(R"({"__metadata__":"pt"})", 0), "__metadata__"},
  };
}

void PrintTo(const BadFile& b, std::ostream* os) { *os << b.label; }

class BadSafetensors : public testing::TestWithParam<BadFile> {};

TEST_P(BadSafetensors, IsRejectedBeforeAnyDataRead) {
  const BadFile& bad = GetParam();
  TempDir dir;
  const std::string path = dir.file(std::string(bad.label) + ".safetensors");
  write_bytes(path, bad.bytes);
  auto f = SafetensorsFile::open(path);
  ASSERT_FALSE(f.ok()) << bad.label;
  EXPECT_EQ(f.status().code(), StatusCode::kBadInput) << f.status().to_string();
  EXPECT_EQ(f.status().message().rfind(path + ": ", 0), 0u)
      << "message must start with the file: " << f.status().message();
  EXPECT_NE(f.status().message().find(bad.expect), std::string::npos) << f.status().message();
}

INSTANTIATE_TEST_SUITE_P(AllRules, BadSafetensors, testing::ValuesIn(bad_files()),
                         [](const testing::TestParamInfo<BadFile>& info) {
                           return std::string(info.param.label);
                         });

TEST(Safetensors, MissingFileIsBadInputNamingIt) {
  TempDir dir;
  const std::string path = dir.file("absent.safetensors");
  auto f = SafetensorsFile::open(path);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), StatusCode::kBadInput);
  EXPECT_NE(f.status().message().find(path), std::string::npos);
  auto d = SafetensorsFile::open(dir.path());
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kBadInput);
}

TEST(Safetensors, AcceptsHandWrittenHeaderWithPaddingAndEmptyTensor) {
  TempDir dir;
  const std::string path = dir.file("ok.safetensors");
  const std::string header = R"({"b":{"dtype":"I16","shape":[2],"data_offsets":[0,4]},)"
                             R"("e":{"dtype":"BOOL","shape":[0],"data_offsets":[4,4]},)"
                             R"("a":{"dtype":"F8_E5M2","shape":[1,3],"data_offsets":[4,7]}}      )";
  write_crafted(path, header, 7);
  auto f = SafetensorsFile::open(path);
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  ASSERT_EQ(f->tensors().size(), 3u);
  EXPECT_EQ(f->tensors()[0].name, "b");
  EXPECT_EQ(f->tensors()[1].name, "e");  // same begin as "a"; the empty one sorts first
  EXPECT_EQ(f->tensors()[2].name, "a");
  EXPECT_EQ(f->tensors()[2].begin, 8 + header.size() + 4);
  EXPECT_EQ(f->find("a")->shape, (std::vector<int64_t>{1, 3}));
}

}  // namespace
}  // namespace dstrain::runtime::hf
