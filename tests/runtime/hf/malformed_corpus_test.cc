// A corpus of hostile Hugging Face checkpoint directories, crafted byte by byte here rather than
// committed as binaries. Each is opened the way model.hf_dir is (open_checkpoint_dir) and must be
// refused with kBadInput (exit 3) and a message naming the bad file and the problem, without a
// crash. The same file is built into hf_sanitize_tests with ASan and UBSan (CMakeLists.txt), so
// an out-of-bounds read, an overflow or a stack overflow on any of these inputs fails there.
#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "base/status.h"
#include "runtime/hf/json_file.h"
#include "runtime/hf/safetensors.h"
#include "runtime/hf/sharded_index.h"
#include "tests/runtime/hf/temp_dir.h"

namespace dstrain::runtime::hf {
namespace {

constexpr char kShard1[] = "model-00001-of-00002.safetensors";
constexpr char kShard2[] = "model-00002-of-00002.safetensors";

// A safetensors file: length prefix, the header as given, `data_bytes` bytes of data.
std::string st_bytes(const std::string& header, size_t data_bytes) {
  return u64_le(header.size()) + header + std::string(data_bytes, '\x11');
}

// One tensor entry of a header, as JSON text.
std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                  const std::string& offsets) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
         ",\"data_offsets\":" + offsets + "}";
}

// A well-formed single file: metadata, "a" F32 [2,2] at [0,16), "b" BF16 [4] at [16,24).
std::string good_single() {
  return st_bytes("{\"__metadata__\":{\"format\":\"pt\"}," + entry("a", "F32", "[2,2]", "[0,16]") +
                      "," + entry("b", "BF16", "[4]", "[16,24]") + "}",
                  24);
}

// A well-formed single file with `a_entry` in place of tensor a (b unchanged).
std::string single_with(const std::string& a_entry, size_t data_bytes) {
  return st_bytes("{" + a_entry + "," + entry("b", "BF16", "[4]", "[16,24]") + "}", data_bytes);
}

// Well-formed shards: "a" and "b" in the first, "c" in the second.
std::map<std::string, std::string> good_shards() {
  return {{kShard1, st_bytes("{" + entry("a", "F32", "[2]", "[0,8]") + "," +
                                 entry("b", "F32", "[1]", "[8,12]") + "}",
                             12)},
          {kShard2, st_bytes("{" + entry("c", "I64", "[1]", "[0,8]") + "}", 8)}};
}

const char kGoodWeightMap[] =
    R"({"a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",)"
    R"( "c": "model-00002-of-00002.safetensors"})";

// A sharded checkpoint whose index is `index_text` over the good shards.
std::map<std::string, std::string> with_index(const std::string& index_text) {
  std::map<std::string, std::string> files = good_shards();
  files[kIndexFileName] = index_text;
  return files;
}

std::string nested_arrays(size_t depth) {
  return std::string(depth, '[') + "1" + std::string(depth, ']');
}

// "1,1,...," (n entries), the start of a long shape list.
std::string ones(size_t n) {
  std::string s;
  for (size_t i = 0; i < n; ++i) s += "1,";
  return s;
}

struct Malformed {
  std::string label;
  std::map<std::string, std::string> files;  // file name in the checkpoint dir -> bytes
  std::string named;                         // the file the message must name
  std::string problem;                       // a substring of the message that says what is wrong
};

void PrintTo(const Malformed& m, std::ostream* os) { *os << m.label; }

// Shorthand for a single-file case (model.safetensors).
Malformed single(const std::string& label, const std::string& bytes, const std::string& problem) {
  return {label, {{kSingleFileName, bytes}}, kSingleFileName, problem};
}

std::vector<Malformed> corpus() {
  const std::string f32x4 = "{" + entry("a", "F32", "[4]", "[0,16]");
  // Deep enough that a recursive walk of the value (nlohmann's dump) overflows the stack.
  const size_t deep = 200000;
  return {
      // The 8-byte header length.
      single("file_shorter_than_prefix", std::string("\x02\0\0", 3), "too short"),
      single("header_len_past_eof", u64_le(64) + "{}", "exceeds the file size"),
      single("header_len_absurd", u64_le(~0ull) + "{}      ", "exceeds the limit"),
      single("header_len_zero", u64_le(0) + std::string(16, '\0'), "header length 0"),
      single("header_len_one", u64_le(1) + "{" + std::string(8, '\0'), "header length 1"),
      // The header as JSON.
      single("header_not_json", st_bytes("{\"a\": {\"dtype\": F32}}", 0), "invalid JSON"),
      single("header_truncated_json", st_bytes("{\"a\": {\"dtype\": \"F32\",", 0), "invalid JSON"),
      single("header_not_object", st_bytes("[{\"dtype\": \"F32\"}]", 0), "expected an object"),
      single("header_is_string", st_bytes("\"model\"", 0), "expected an object"),
      single("header_nested_too_deep",
             st_bytes("{\"a\":{\"dtype\":\"F32\",\"shape\":" + nested_arrays(deep) +
                          ",\"data_offsets\":[0,4]}}",
                      4),
             "nested deeper than"),
      // Tensor entries.
      single("entry_not_object", st_bytes("{\"a\": 16}", 0), "tensor a: entry is a JSON number"),
      single("missing_dtype", single_with(R"("a":{"shape":[2,2],"data_offsets":[0,16]})", 24),
             "tensor a: missing string \"dtype\""),
      single("missing_shape", single_with(R"("a":{"dtype":"F32","data_offsets":[0,16]})", 24),
             "tensor a: missing list \"shape\""),
      single("missing_data_offsets", single_with(R"("a":{"dtype":"F32","shape":[2,2]})", 24),
             "tensor a: \"data_offsets\" must be"),
      single("dtype_not_allowed", single_with(entry("a", "C64", "[2,1]", "[0,16]"), 24),
             "tensor a: unsupported dtype \"C64\""),
      single("dtype_lower_case", single_with(entry("a", "f32", "[2,2]", "[0,16]"), 24),
             "unsupported dtype \"f32\""),
      single("shape_negative_dim", single_with(entry("a", "F32", "[-2,-2]", "[0,16]"), 24),
             "tensor a: shape entry 0 is -2, not a non-negative integer"),
      single("shape_long_with_negative_dim",
             single_with(entry("a", "F32", "[" + ones(100000) + "-1]", "[0,16]"), 24),
             "tensor a: shape entry 100000 is -1, not a non-negative integer"),
      single("shape_dim_above_int64",
             single_with(entry("a", "F32", "[9223372036854775808]", "[0,16]"), 24),
             "not a non-negative integer"),
      single("shape_dim_float", single_with(entry("a", "F32", "[2.0,2]", "[0,16]"), 24),
             "not a non-negative integer"),
      single("shape_bytes_mismatch", single_with(entry("a", "F32", "[2,3]", "[0,16]"), 24),
             "tensor a: shape [2, 3] x F32 needs 24 bytes, offsets give 16"),
      single("shape_product_overflow",
             single_with(entry("a", "F32", "[4294967296,4294967296,4]", "[0,16]"), 24),
             "tensor a: shape [4294967296, 4294967296, 4] x F32 overflows 64 bits"),
      single("shape_product_wraps_to_size",
             // 2^62 x 4 bytes wraps to 0 in 64 bits; with [0,0] offsets a wrapping product passes.
             single_with(entry("a", "F32", "[4611686018427387904]", "[0,0]"), 24), "overflows"),
      // Offsets.
      single("offsets_overlap",
             st_bytes(f32x4 + "," + entry("b", "F32", "[4]", "[8,24]") + "}", 24),
             "tensor b: data [8, 24) overlaps tensor a"),
      single("offsets_gap", st_bytes(f32x4 + "," + entry("b", "F32", "[4]", "[20,36]") + "}", 36),
             "tensor b: data starts at 20, leaving a gap after byte 16"),
      single("offsets_beyond_file",
             st_bytes(f32x4 + "," + entry("b", "F32", "[4]", "[16,32]") + "}", 20),
             "tensor b: data_offsets [16,32] run past the data section of 20 bytes"),
      single("offsets_begin_after_end", single_with(entry("a", "F32", "[0]", "[16,0]"), 24),
             "tensor a: data_offsets [16,0] has begin > end"),
      single("offsets_beyond_u64",
             single_with(entry("a", "F32", "[4]", "[0,18446744073709551632]"), 24),
             "tensor a: \"data_offsets\" must be"),
      single("offsets_negative", single_with(entry("a", "F32", "[4]", "[-16,0]"), 24),
             "\"data_offsets\" must be"),
      single("data_past_last_tensor", single_with(entry("a", "F32", "[2,2]", "[0,16]"), 30),
             "tensors cover 24 bytes of a data section of 30"),
      // Names: nlohmann keeps the last of two equal keys, so a second "a" must be found while
      // parsing, also when it is spelled with an escape.
      single("duplicate_tensor_name",
             st_bytes(f32x4 + "," + entry("a", "F32", "[4]", "[16,32]") + "}", 32),
             "key \"a\" appears twice"),
      single("duplicate_name_escaped",
             st_bytes(f32x4 + "," + entry("\\u0061", "F32", "[4]", "[16,32]") + "}", 32),
             "key \"a\" appears twice"),
      single("duplicate_metadata", st_bytes("{\"__metadata__\":{},\"__metadata__\":{}}", 0),
             "appears twice"),
      // __metadata__.
      single("metadata_not_object", st_bytes("{\"__metadata__\":[\"format\",\"pt\"]}", 0),
             "\"__metadata__\" is a JSON array"),
      single("metadata_value_not_string", st_bytes("{\"__metadata__\":{\"format\":{\"pt\":1}}}", 0),
             "\"__metadata__\" entry \"format\" is a JSON object"),
      single("metadata_value_null", st_bytes("{\"__metadata__\":{\"format\":null}}", 0),
             "\"__metadata__\" entry \"format\" is a JSON null"),
      // model.safetensors.index.json.
      {"index_not_json", with_index("{\"weight_map\": {\"a\": "), kIndexFileName, "invalid JSON"},
      {"index_not_object", with_index("[\"weight_map\"]"), kIndexFileName, "expected an object"},
      {"index_weight_map_missing", with_index("{\"metadata\": {}}"), kIndexFileName,
       "missing object \"weight_map\""},
      {"index_weight_map_array", with_index("{\"weight_map\": [\"a\", \"b\"]}"), kIndexFileName,
       "missing object \"weight_map\""},
      {"index_weight_map_string", with_index("{\"weight_map\": \"model.safetensors\"}"),
       kIndexFileName, "missing object \"weight_map\""},
      {"index_shard_parent_dir",
       with_index(R"({"weight_map": {"a": "../model-00001-of-00002.safetensors"}})"),
       kIndexFileName, "tensor a: shard name \"../model-00001-of-00002.safetensors\" contains '/'"},
      {"index_shard_absolute", with_index(R"({"weight_map": {"a": "/etc/passwd.safetensors"}})"),
       kIndexFileName, "contains '/'"},
      {"index_shard_dotdot", with_index(R"({"weight_map": {"a": "..safetensors.safetensors"}})"),
       kIndexFileName, "contains \"..\""},
      {"index_shard_not_string", with_index(R"({"weight_map": {"a": ["model.safetensors"]}})"),
       kIndexFileName, "tensor a: shard is a JSON array"},
      {"index_missing_shard",
       with_index(R"({"weight_map": {"a": "model-00001-of-00002.safetensors",)"
                  R"( "d": "model-00003-of-00003.safetensors"}})"),
       "model-00003-of-00003.safetensors", "cannot open"},
      {"index_tensor_not_in_shard",
       with_index(R"({"weight_map": {"c": "model-00001-of-00002.safetensors"}})"), kIndexFileName,
       "tensor c is mapped to"},
      {"index_duplicate_tensor",
       with_index(R"({"weight_map": {"a": "model-00001-of-00002.safetensors",)"
                  R"( "a": "model-00002-of-00002.safetensors"}})"),
       kIndexFileName, "key \"a\" appears twice"},
      {"index_total_size_negative",
       with_index(std::string("{\"metadata\": {\"total_size\": -20}, \"weight_map\": ") +
                  kGoodWeightMap + "}"),
       kIndexFileName, "\"metadata.total_size\""},
      {"index_total_size_long_list",
       with_index("{\"metadata\": {\"total_size\": [" + ones(100000) +
                  "1]}, \"weight_map\": " + kGoodWeightMap + "}"),
       kIndexFileName, "\"metadata.total_size\" is a JSON array"},
      {"index_total_size_nested_too_deep",
       with_index("{\"metadata\": {\"total_size\": " + nested_arrays(deep) +
                  "}, \"weight_map\": " + kGoodWeightMap + "}"),
       kIndexFileName, "nested deeper than"},
      {"index_over_corrupt_shard",
       [] {
         auto files = with_index(std::string("{\"weight_map\": ") + kGoodWeightMap + "}");
         files[kShard2] = st_bytes("{" + entry("c", "I64", "[2]", "[0,8]") + "}", 8);
         return files;
       }(),
       kShard2, "tensor c: shape [2] x I64 needs 16 bytes, offsets give 8"},
  };
}

class MalformedCorpus : public testing::TestWithParam<Malformed> {};

TEST_P(MalformedCorpus, IsRefusedAsBadInputNamingFileAndProblem) {
  const Malformed& m = GetParam();
  TempDir dir;
  for (const auto& [name, bytes] : m.files) write_bytes(dir.file(name), bytes);
  auto ckpt = open_checkpoint_dir(dir.path());
  ASSERT_FALSE(ckpt.ok()) << m.label << " was accepted";
  const base::Status& st = ckpt.status();
  EXPECT_EQ(st.code(), base::StatusCode::kBadInput) << st.to_string();
  EXPECT_EQ(base::exit_code(st), 3);
  EXPECT_NE(st.message().find(dir.file(m.named)), std::string::npos) << st.message();
  EXPECT_NE(st.message().find(m.problem), std::string::npos) << st.message();
  // Messages go to a terminal: bounded even when the header is megabytes of junk.
  EXPECT_LT(st.message().size(), 2000u) << st.message().substr(0, 2000);
  // The sharded cases are refused before any tensor is served, whichever file is wrong.
  if (m.files.count(kIndexFileName)) {
    EXPECT_NE(st.message().find(dir.file(kIndexFileName)), std::string::npos) << st.message();
  }
}

INSTANTIATE_TEST_SUITE_P(Corpus, MalformedCorpus, testing::ValuesIn(corpus()),
                         [](const testing::TestParamInfo<Malformed>& info) {
                           return info.param.label;
                         });

// The corpus' well-formed starting points open, so each case above fails for its own defect.
TEST(MalformedCorpusBaseline, UncorruptedFilesOpen) {
  TempDir single_dir;
  write_bytes(single_dir.file(kSingleFileName), good_single());
  auto single = open_checkpoint_dir(single_dir.path());
  ASSERT_TRUE(single.ok()) << single.status().to_string();
  EXPECT_EQ(single->names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(single->shards()[0].metadata().at("format"), "pt");

  TempDir single_with_dir;
  write_bytes(single_with_dir.file(kSingleFileName),
              single_with(entry("a", "F32", "[2,2]", "[0,16]"), 24));
  EXPECT_TRUE(open_checkpoint_dir(single_with_dir.path()).ok());

  TempDir sharded_dir;
  for (const auto& [name, bytes] :
       with_index(std::string("{\"metadata\": {\"total_size\": 20}, \"weight_map\": ") +
                  kGoodWeightMap + "}")) {
    write_bytes(sharded_dir.file(name), bytes);
  }
  auto sharded = open_checkpoint_dir(sharded_dir.path());
  ASSERT_TRUE(sharded.ok()) << sharded.status().to_string();
  EXPECT_EQ(sharded->names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(sharded->total_size(), std::optional<uint64_t>(20));
}

// The depth limit counts brackets of the JSON structure only, up to kMaxJsonDepth inclusive.
TEST(MalformedCorpusBaseline, NestingLimitIsExact) {
  EXPECT_TRUE(parse_json_strict(nested_arrays(kMaxJsonDepth), "t").ok());
  const base::Status st = parse_json_strict(nested_arrays(kMaxJsonDepth + 1), "t").status();
  EXPECT_EQ(st.code(), base::StatusCode::kBadInput);
  EXPECT_NE(st.message().find("t: JSON nested deeper than 64 levels"), std::string::npos)
      << st.message();
  const std::string brackets_in_strings =
      "{\"a\\\"[\": \"" + std::string(1000, '[') + "\", \"b\": [\"]]]{{{\"]}";
  auto parsed = parse_json_strict(brackets_in_strings, "t");
  ASSERT_TRUE(parsed.ok()) << parsed.status().to_string();
  EXPECT_EQ((*parsed)["a\"["].get<std::string>().size(), 1000u);
}

TEST(MalformedCorpusBaseline, HasAtLeastFifteenDistinctCases) {
  const std::vector<Malformed> all = corpus();
  EXPECT_GE(all.size(), 15u);
  std::map<std::string, int> labels;
  for (const Malformed& m : all) EXPECT_EQ(++labels[m.label], 1) << m.label;
}

}  // namespace
}  // namespace dstrain::runtime::hf
