#include "runtime/checkpoint/index.h"

#include <nlohmann/json.hpp>

#include <limits>
#include <set>

#include "runtime/checkpoint/block_reader.h"
#include "runtime/checkpoint/checksum.h"
#include "runtime/checkpoint/file_io.h"

namespace dstrain::runtime::checkpoint {
namespace {

using nlohmann::json;

// A JSON number that is not an integer of the field's type. nlohmann's get<int64_t>() casts a
// float such as 1e60 unchecked, which is undefined behaviour on a hostile index (found by
// tests/fuzz/checkpoint_index_fuzz).
struct NotAnInteger {
  std::string key;
};

template <typename T>
T to_integer(const json& x, const std::string& key) {
  constexpr T kMin = std::numeric_limits<T>::min();
  constexpr T kMax = std::numeric_limits<T>::max();
  if (x.is_number_unsigned() && x.get<uint64_t>() <= static_cast<uint64_t>(kMax)) {
    return static_cast<T>(x.get<uint64_t>());
  }
  if (x.is_number_integer() && !x.is_number_unsigned() &&
      x.get<int64_t>() >= static_cast<int64_t>(kMin) &&
      x.get<int64_t>() <= static_cast<int64_t>(kMax)) {
    return static_cast<T>(x.get<int64_t>());
  }
  throw NotAnInteger{key};
}

template <typename T>
T integer_at(const json& j, const char* key) {
  return to_integer<T>(j.at(key), key);
}

template <typename T>
std::vector<T> integers_at(const json& j, const char* key) {
  const json& a = j.at(key);
  if (!a.is_array()) throw NotAnInteger{key};
  std::vector<T> out;
  for (const json& x : a) out.push_back(to_integer<T>(x, key));
  return out;
}

json piece_json(const Piece& p) {
  return {{"file", p.file},
          {"dataset", p.dataset},
          {"offset", p.offset},
          {"numel", p.numel},
          {"byte_offset", p.byte_offset}};
}

// -1 when the product of the (non-negative) dimensions does not fit in int64_t: a hostile
// index must not reach signed overflow.
int64_t shape_numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (__builtin_mul_overflow(n, d, &n)) return -1;
  }
  return n;
}

json file_json(const FileEntry& f) {
  json j = {{"name", f.name}, {"size", f.size}, {"crc32", f.crc32}};
  if (f.block_bytes > 0) {
    j["block_bytes"] = f.block_bytes;
    j["block_crc32"] = f.block_crc32;
  }
  return j;
}

// The host memory verify_file() reads through (both slots).
constexpr int64_t kVerifyBufferBytes = int64_t{64} << 20;

// Version 1: the whole file through the page cache, one crc.
base::Status verify_whole_file(const std::string& path, const FileEntry& f) {
  ASSIGN_OR_RETURN(FileDigest d, file_digest(path));
  if (d.size != f.size) {
    return base::Status::BadInput(path + ": size " + std::to_string(d.size) +
                                  " bytes, index says " + std::to_string(f.size) +
                                  " (truncated or overwritten)");
  }
  if (d.crc != f.crc32) {
    return base::Status::BadInput(path + ": checksum mismatch (crc32 " + std::to_string(d.crc) +
                                  ", index says " + std::to_string(f.crc32) + ")");
  }
  return base::Status::Ok();
}

}  // namespace

int64_t block_count(const FileEntry& f) {
  // Not (size + block_bytes - 1) / block_bytes: that overflows for sizes near INT64_MAX.
  return f.block_bytes > 0 ? f.size / f.block_bytes + (f.size % f.block_bytes != 0 ? 1 : 0) : 0;
}

int64_t dtype_bytes(const std::string& dtype) {
  if (dtype == "fp32") return 4;
  if (dtype == "bf16" || dtype == "fp16") return 2;
  return 0;
}

std::string index_to_json(const CheckpointIndex& index) {
  json files = json::array();
  for (const FileEntry& f : index.files) files.push_back(file_json(f));
  json tensors = json::object();
  for (const auto& [kind, by_name] : index.tensors) {
    json k = json::object();
    for (const auto& [name, t] : by_name) {
      json pieces = json::array();
      for (const Piece& p : t.pieces) pieces.push_back(piece_json(p));
      k[name] = {{"shape", t.shape}, {"dtype", t.dtype}, {"pieces", pieces}};
    }
    tensors[kind] = k;
  }
  json j = {{"format", "dstrain-checkpoint"},
            {"format_version", index.format_version},
            {"dstrain_version", index.dstrain_version},
            {"step", index.step},
            {"world_size", index.world_size},
            {"zero_stage", index.zero_stage},
            {"dtype", index.dtype},
            {"seed", index.seed},
            {"scalars",
             {{"adam_step", index.adam_step},
              {"loss_scale", index.loss_scale},
              {"good_steps", index.good_steps}}},
            {"files", files},
            {"tensors", tensors},
            {"config", index.config_toml}};
  return j.dump(1) + "\n";
}

base::StatusOr<CheckpointIndex> parse_index(const std::string& text, const std::string& source) {
  CheckpointIndex index;
  try {
    const json j = json::parse(text);
    if (j.value("format", "") != "dstrain-checkpoint") {
      return base::Status::BadInput(source + ": not a dstrain checkpoint index");
    }
    index.format_version = integer_at<int>(j, "format_version");
    if (index.format_version < kOldestFormatVersion || index.format_version > kFormatVersion) {
      return base::Status::BadInput(
          source + ": format_version " + std::to_string(index.format_version) +
          " is not supported (this dstrain reads " + std::to_string(kOldestFormatVersion) + " to " +
          std::to_string(kFormatVersion) + ")");
    }
    index.dstrain_version = j.at("dstrain_version").get<std::string>();
    index.step = integer_at<int64_t>(j, "step");
    index.world_size = integer_at<int>(j, "world_size");
    index.zero_stage = integer_at<int64_t>(j, "zero_stage");
    index.dtype = j.at("dtype").get<std::string>();
    index.seed = integer_at<int64_t>(j, "seed");
    const json& s = j.at("scalars");
    index.adam_step = s.at("adam_step").get<double>();
    index.loss_scale = s.at("loss_scale").get<double>();
    index.good_steps = integer_at<int64_t>(s, "good_steps");
    index.config_toml = j.at("config").get<std::string>();
    for (const json& f : j.at("files")) {
      FileEntry e{f.at("name").get<std::string>(), integer_at<int64_t>(f, "size"),
                  integer_at<uint32_t>(f, "crc32")};
      if (index.format_version >= kBlockChecksumsSince) {
        e.block_bytes = integer_at<int64_t>(f, "block_bytes");
        e.block_crc32 = integers_at<uint32_t>(f, "block_crc32");
      }
      index.files.push_back(std::move(e));
    }
    for (const auto& [kind, by_name] : j.at("tensors").items()) {
      for (const auto& [name, t] : by_name.items()) {
        TensorEntry e;
        e.shape = integers_at<int64_t>(t, "shape");
        e.dtype = t.at("dtype").get<std::string>();
        for (const json& p : t.at("pieces")) {
          e.pieces.push_back({p.at("file").get<std::string>(), p.at("dataset").get<std::string>(),
                              integer_at<int64_t>(p, "offset"), integer_at<int64_t>(p, "numel"),
                              integer_at<int64_t>(p, "byte_offset")});
        }
        index.tensors[kind][name] = std::move(e);
      }
    }
  } catch (const json::exception& e) {
    return base::Status::BadInput(source + ": malformed index: " + e.what());
  } catch (const NotAnInteger& e) {
    return base::Status::BadInput(source + ": malformed index: " + e.key +
                                  " is not an integer in range");
  }
  RETURN_IF_ERROR(validate_index(index, source));
  return index;
}

base::Status validate_index(const CheckpointIndex& index, const std::string& source) {
  auto bad = [&](const std::string& what) { return base::Status::BadInput(source + ": " + what); };
  if (index.step < 0) return bad("negative step");
  if (index.world_size < 1) return bad("world_size must be >= 1");
  std::map<std::string, int64_t> file_size;
  for (const FileEntry& f : index.files) {
    if (f.name.empty() || f.name.find('/') != std::string::npos || f.name[0] == '.') {
      return bad("file name '" + f.name + "' is not a plain name");
    }
    if (f.size < 0) return bad(f.name + ": negative size");
    if (!file_size.emplace(f.name, f.size).second) return bad(f.name + ": listed twice");
    if (index.format_version < kBlockChecksumsSince) {
      if (f.block_bytes != 0 || !f.block_crc32.empty()) {
        return bad(f.name + ": block checksums need format_version " +
                   std::to_string(kBlockChecksumsSince));
      }
      continue;
    }
    if (f.block_bytes <= 0 || f.block_bytes % kDirectIoAlignment != 0) {
      return bad(f.name + ": block_bytes " + std::to_string(f.block_bytes) +
                 " is not a positive multiple of " + std::to_string(kDirectIoAlignment));
    }
    if (static_cast<int64_t>(f.block_crc32.size()) != block_count(f)) {
      return bad(f.name + ": " + std::to_string(f.block_crc32.size()) + " block checksums, " +
                 std::to_string(f.size) + " bytes need " + std::to_string(block_count(f)));
    }
    if (fold_block_crc32s(f.block_crc32, f.block_bytes, f.size) != f.crc32) {
      return bad(f.name + ": the block checksums do not add up to the file's crc32");
    }
  }
  const std::set<std::string> kinds = {"param", "exp_avg", "exp_avg_sq"};
  for (const auto& [kind, by_name] : index.tensors) {
    if (!kinds.count(kind)) return bad("unknown state kind '" + kind + "'");
    for (const auto& [name, t] : by_name) {
      const std::string what = kind + "/" + name;
      const int64_t elem = dtype_bytes(t.dtype);
      if (elem == 0) return bad(what + ": unknown dtype '" + t.dtype + "'");
      for (int64_t d : t.shape) {
        if (d < 0) return bad(what + ": negative dimension");
      }
      int64_t next = 0;
      for (const Piece& p : t.pieces) {
        if (p.offset != next || p.numel <= 0) {
          return bad(what + ": pieces do not tile the tensor (piece at " +
                     std::to_string(p.offset) + " with " + std::to_string(p.numel) +
                     " elements, expected one at " + std::to_string(next) + ")");
        }
        auto f = file_size.find(p.file);
        if (f == file_size.end()) return bad(what + ": piece in unlisted file '" + p.file + "'");
        // Division, not byte_offset + numel * elem, which can overflow.
        if (p.byte_offset < 0 || p.byte_offset > f->second ||
            p.numel > (f->second - p.byte_offset) / elem) {
          return bad(what + ": piece at byte " + std::to_string(p.byte_offset) + " with " +
                     std::to_string(p.numel) + " elements of " + std::to_string(elem) +
                     " bytes lies outside " + p.file + " (" + std::to_string(f->second) +
                     " bytes)");
        }
        if (__builtin_add_overflow(next, p.numel, &next))
          return bad(what + ": piece sizes overflow");
      }
      if (shape_numel(t.shape) < 0) return bad(what + ": shape has too many elements");
      if (next != shape_numel(t.shape)) {
        return bad(what + ": pieces hold " + std::to_string(next) + " elements, shape needs " +
                   std::to_string(shape_numel(t.shape)));
      }
    }
  }
  return base::Status::Ok();
}

base::StatusOr<CheckpointIndex> read_index(const std::string& dir) {
  const std::string path = dir + "/" + kIndexFile;
  ASSIGN_OR_RETURN(std::string text, read_text_file(path));
  return parse_index(text, path);
}

base::Status verify_file(const std::string& dir, const FileEntry& f) {
  const std::string path = dir + "/" + f.name;
  if (f.block_bytes <= 0) return verify_whole_file(path, f);
  const std::vector<FileEntry> files = {f};
  const int64_t slot = read_slot_bytes(files, kVerifyBufferBytes);
  AlignedBuffer slots[2];
  for (AlignedBuffer& b : slots) {
    ASSIGN_OR_RETURN(b, AlignedBuffer::allocate(static_cast<size_t>(slot)));
  }
  const ReadSlots view{{slots[0].data(), slots[1].data()}, slot};
  return read_blocks(dir, files, {{0, 0, f.size}}, view,
                     [](const ReadWindow&) { return base::Status::Ok(); })
      .status();
}

base::Status verify_files(const std::string& dir, const CheckpointIndex& index) {
  for (const FileEntry& f : index.files) RETURN_IF_ERROR(verify_file(dir, f));
  return base::Status::Ok();
}

}  // namespace dstrain::runtime::checkpoint
