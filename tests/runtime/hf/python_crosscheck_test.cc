// Bit-exact agreement with Hugging Face's own `safetensors` package, run through the Python of
// DSTRAIN_PYTHON (tests/runtime/hf/crosscheck.py does the Python side).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/hf/float16.h"
#include "runtime/hf/json_file.h"
#include "runtime/hf/safetensors.h"
#include "tests/runtime/hf/temp_dir.h"

namespace dstrain::runtime::hf {
namespace {

using nlohmann::json;

// Runs crosscheck.py in `mode` on `dir`; returns its exit status (-1 if it could not run).
int run_crosscheck(const std::string& mode, const std::string& dir) {
  const char* python = std::getenv("DSTRAIN_PYTHON");
  const std::string cmd = std::string("'") + python +
                          "' '" DSTRAIN_HF_TEST_SOURCE_DIR "/crosscheck.py' " + mode + " '" + dir +
                          "'";
  const int rc = std::system(cmd.c_str());
  return (rc == -1 || !WIFEXITED(rc)) ? -1 : WEXITSTATUS(rc);
}

bool have_python() {
  const char* python = std::getenv("DSTRAIN_PYTHON");
  return python != nullptr && *python != '\0';
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << path;
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string read_tensor(const SafetensorsFile& f, const TensorInfo& t) {
  std::string out(t.nbytes(), '\0');
  const base::Status st = f.read(t, 0, t.nbytes(), out.data());
  EXPECT_TRUE(st.ok()) << st.to_string();
  return out;
}

TEST(PythonCrossCheck, ReadsFilesWrittenByPythonBitExactly) {
  if (!have_python()) GTEST_SKIP() << "DSTRAIN_PYTHON is not set";
  TempDir dir;
  ASSERT_EQ(run_crosscheck("write", dir.path()), 0);
  auto manifest = read_json_object_file(dir.file("manifest.json"));
  ASSERT_TRUE(manifest.ok()) << manifest.status().to_string();
  ASSERT_EQ(manifest->size(), 2u);
  size_t checked = 0;
  for (const auto& [file_name, tensors] : manifest->items()) {
    auto f = SafetensorsFile::open(dir.file(file_name));
    ASSERT_TRUE(f.ok()) << f.status().to_string();
    EXPECT_EQ(f->tensors().size(), tensors.size()) << file_name;
    EXPECT_EQ(f->metadata().at("format"), file_name == "numpy.safetensors" ? "np" : "pt");
    for (const auto& [name, entry] : tensors.items()) {
      SCOPED_TRACE(file_name + ": " + name);
      const TensorInfo* t = f->find(name);
      ASSERT_NE(t, nullptr);
      EXPECT_EQ(t->dtype, entry["dtype"].get<std::string>());
      EXPECT_EQ(t->shape, entry["shape"].get<std::vector<int64_t>>());
      const std::string expected =
          read_file(dir.path() + "/raw/" + file_name + "/" + name + ".bin");
      EXPECT_EQ(read_tensor(*f, *t), expected);
      if (t->nbytes() >= 8) {  // a slice from the middle, as a sharded load reads it
        std::string part(t->nbytes() - 5, '\0');
        ASSERT_TRUE(f->read(*t, 3, part.size(), part.data()).ok());
        EXPECT_EQ(part, expected.substr(3, part.size()));
      }
      ++checked;
    }
  }
  EXPECT_EQ(checked, 15u);
}

std::vector<uint32_t> as_u32(const std::string& bytes) {
  std::vector<uint32_t> out(bytes.size() / 4);
  std::memcpy(out.data(), bytes.data(), out.size() * 4);
  return out;
}
std::vector<uint16_t> as_u16(const std::string& bytes) {
  std::vector<uint16_t> out(bytes.size() / 2);
  std::memcpy(out.data(), bytes.data(), out.size() * 2);
  return out;
}

TEST(PythonCrossCheck, ConversionsMatchNumpyAndTorch) {
  if (!have_python()) GTEST_SKIP() << "DSTRAIN_PYTHON is not set";
  TempDir dir;
  ASSERT_EQ(run_crosscheck("write", dir.path()), 0);
  auto f = SafetensorsFile::open(dir.file("convert.safetensors"));
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  auto get = [&](const std::string& name) { return read_tensor(*f, *f->find(name)); };
  const std::vector<uint32_t> f32 = as_u32(get("f32"));
  const std::vector<uint16_t> f16 = as_u16(get("f16_bits"));
  const std::vector<uint16_t> bf16 = as_u16(get("bf16_bits"));
  const std::vector<uint32_t> f16_back = as_u32(get("f16_back"));
  const std::vector<uint32_t> bf16_back = as_u32(get("bf16_back"));
  ASSERT_GT(f32.size(), 20000u);
  ASSERT_EQ(f16.size(), f32.size());
  ASSERT_EQ(bf16.size(), f32.size());
  int failures = 0;
  for (size_t i = 0; i < f32.size() && failures < 10; ++i) {
    float v;
    std::memcpy(&v, &f32[i], 4);
    const float h = fp16_to_fp32(fp32_to_fp16(v));
    const float b = bf16_to_fp32(fp32_to_bf16(v));
    uint32_t h_bits, b_bits;
    std::memcpy(&h_bits, &h, 4);
    std::memcpy(&b_bits, &b, 4);
    const bool ok = fp32_to_fp16(v) == f16[i] && fp32_to_bf16(v) == bf16[i] &&
                    h_bits == f16_back[i] && b_bits == bf16_back[i];
    if (!ok) {
      ++failures;
      ADD_FAILURE() << std::hex << "fp32 0x" << f32[i] << ": fp16 0x" << fp32_to_fp16(v)
                    << " vs numpy 0x" << f16[i] << ", bf16 0x" << fp32_to_bf16(v) << " vs torch 0x"
                    << bf16[i];
    }
  }
}

// Tensors of every supported dtype, values from a fixed seed.
struct CppTensor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

std::vector<CppTensor> cpp_tensors(bool numpy_dtypes_only) {
  std::mt19937_64 rng(7);
  auto random_bytes = [&](size_t n) {
    std::string s(n, '\0');
    for (char& c : s) c = static_cast<char>(rng());
    return s;
  };
  auto floats = [&](size_t n) {
    std::normal_distribution<double> normal(0.0, 3.0);
    std::vector<double> v(n);
    for (double& x : v) x = normal(rng);
    return v;
  };
  std::vector<CppTensor> out;
  auto add = [&](std::string name, std::string dtype, std::vector<int64_t> shape, std::string b) {
    out.push_back({std::move(name), std::move(dtype), std::move(shape), std::move(b)});
  };
  auto pack = [](const auto& v) {
    return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(v[0]));
  };
  {
    const std::vector<double> d = floats(6);
    add("model.embed_tokens.weight", "F64", {2, 3}, pack(d));
  }
  {
    std::vector<float> v;
    for (double x : floats(12)) v.push_back(static_cast<float>(x));
    add("model.layers.0.mlp.up_proj.weight", "F32", {3, 4}, pack(v));
    std::vector<uint16_t> h;
    for (float x : v) h.push_back(fp32_to_fp16(x));
    add("model.layers.0.mlp.down_proj.weight", "F16", {4, 3}, pack(h));
    if (!numpy_dtypes_only) {
      std::vector<uint16_t> b;
      for (float x : v) b.push_back(fp32_to_bf16(x));
      add("model.norm.weight", "BF16", {12}, pack(b));
      add("f8.e4m3", "F8_E4M3", {5}, random_bytes(5));
      add("f8.e5m2", "F8_E5M2", {1, 5}, random_bytes(5));
      add("empty.bf16", "BF16", {0}, "");
    }
  }
  add("i64", "I64", {3}, random_bytes(24));
  add("i32", "I32", {}, random_bytes(4));
  add("i16", "I16", {2, 1, 2}, random_bytes(8));
  add("i8", "I8", {9}, random_bytes(9));
  add("u8", "U8", {3, 3}, random_bytes(9));
  add("empty.f32", "F32", {4, 0}, "");
  std::string mask = random_bytes(10);
  for (char& c : mask) c = static_cast<char>(c & 1);
  add("mask", "BOOL", {10}, mask);
  return out;
}

void write_for_python(const TempDir& dir, const std::string& file_name, bool numpy_dtypes_only,
                      const std::map<std::string, std::string>& metadata, json* manifest) {
  const std::vector<CppTensor> tensors = cpp_tensors(numpy_dtypes_only);
  std::vector<TensorData> data;
  json entries = json::object();
  const std::string raw_dir = dir.path() + "/cpp_raw/" + file_name;
  std::filesystem::create_directories(raw_dir);
  for (const CppTensor& t : tensors) {
    data.push_back({t.name, t.dtype, t.shape, t.bytes.data(), t.bytes.size()});
    entries[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}};
    write_bytes(raw_dir + "/" + t.name + ".bin", t.bytes);
  }
  const base::Status st = write_safetensors(dir.file(file_name), data, metadata);
  ASSERT_TRUE(st.ok()) << st.to_string();
  (*manifest)[file_name] = {{"__metadata__", metadata.empty() ? json(nullptr) : json(metadata)},
                            {"tensors", entries}};
}

TEST(PythonCrossCheck, PythonReadsFilesWrittenByCpp) {
  if (!have_python()) GTEST_SKIP() << "DSTRAIN_PYTHON is not set";
  TempDir dir;
  json manifest = json::object();
  write_for_python(dir, "cpp.safetensors", false, {{"format", "pt"}, {"producer", "dstrain"}},
                   &manifest);
  write_for_python(dir, "cpp_np.safetensors", true, {}, &manifest);
  write_bytes(dir.file("cpp_manifest.json"), manifest.dump());
  EXPECT_EQ(run_crosscheck("check", dir.path()), 0);
}

}  // namespace
}  // namespace dstrain::runtime::hf
