#include "runtime/checkpoint/index.h"

#include <nlohmann/json.hpp>

#include <set>

#include "runtime/checkpoint/block_reader.h"
#include "runtime/checkpoint/checksum.h"
#include "runtime/checkpoint/file_io.h"

namespace dstrain::runtime::checkpoint {
namespace {

using nlohmann::json;

json piece_json(const Piece& p) {
  return {{"file", p.file}, {"dataset", p.dataset}, {"offset", p.offset}, {"numel", p.numel},
          {"byte_offset", p.byte_offset}};
}

int64_t shape_numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
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
    return base::Status::BadInput(path + ": size " + std::to_string(d.size) + " bytes, index says " +
                                  std::to_string(f.size) + " (truncated or overwritten)");
  }
  if (d.crc != f.crc32) {
    return base::Status::BadInput(path + ": checksum mismatch (crc32 " + std::to_string(d.crc) +
                                  ", index says " + std::to_string(f.crc32) + ")");
  }
  return base::Status::Ok();
}

}  // namespace

int64_t block_count(const FileEntry& f) {
  return f.block_bytes > 0 ? (f.size + f.block_bytes - 1) / f.block_bytes : 0;
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
            {"scalars", {{"adam_step", index.adam_step}, {"loss_scale", index.loss_scale},
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
    index.format_version = j.at("format_version").get<int>();
    if (index.format_version < kOldestFormatVersion || index.format_version > kFormatVersion) {
      return base::Status::BadInput(source + ": format_version " + std::to_string(index.format_version) +
                                    " is not supported (this dstrain reads " +
                                    std::to_string(kOldestFormatVersion) + " to " +
                                    std::to_string(kFormatVersion) + ")");
    }
    index.dstrain_version = j.at("dstrain_version").get<std::string>();
    index.step = j.at("step").get<int64_t>();
    index.world_size = j.at("world_size").get<int>();
    index.zero_stage = j.at("zero_stage").get<int64_t>();
    index.dtype = j.at("dtype").get<std::string>();
    index.seed = j.at("seed").get<int64_t>();
    const json& s = j.at("scalars");
    index.adam_step = s.at("adam_step").get<double>();
    index.loss_scale = s.at("loss_scale").get<double>();
    index.good_steps = s.at("good_steps").get<int64_t>();
    index.config_toml = j.at("config").get<std::string>();
    for (const json& f : j.at("files")) {
      FileEntry e{f.at("name").get<std::string>(), f.at("size").get<int64_t>(), f.at("crc32").get<uint32_t>()};
      if (index.format_version >= kBlockChecksumsSince) {
        e.block_bytes = f.at("block_bytes").get<int64_t>();
        e.block_crc32 = f.at("block_crc32").get<std::vector<uint32_t>>();
      }
      index.files.push_back(std::move(e));
    }
    for (const auto& [kind, by_name] : j.at("tensors").items()) {
      for (const auto& [name, t] : by_name.items()) {
        TensorEntry e;
        e.shape = t.at("shape").get<std::vector<int64_t>>();
        e.dtype = t.at("dtype").get<std::string>();
        for (const json& p : t.at("pieces")) {
          e.pieces.push_back({p.at("file").get<std::string>(), p.at("dataset").get<std::string>(),
                              p.at("offset").get<int64_t>(), p.at("numel").get<int64_t>(),
                              p.at("byte_offset").get<int64_t>()});
        }
        index.tensors[kind][name] = std::move(e);
      }
    }
  } catch (const json::exception& e) {
    return base::Status::BadInput(source + ": malformed index: " + e.what());
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
        return bad(f.name + ": block checksums need format_version " + std::to_string(kBlockChecksumsSince));
      }
      continue;
    }
    if (f.block_bytes <= 0 || f.block_bytes % kDirectIoAlignment != 0) {
      return bad(f.name + ": block_bytes " + std::to_string(f.block_bytes) + " is not a positive multiple of " +
                 std::to_string(kDirectIoAlignment));
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
          return bad(what + ": pieces do not tile the tensor (piece at " + std::to_string(p.offset) +
                     " with " + std::to_string(p.numel) + " elements, expected one at " +
                     std::to_string(next) + ")");
        }
        auto f = file_size.find(p.file);
        if (f == file_size.end()) return bad(what + ": piece in unlisted file '" + p.file + "'");
        if (p.byte_offset < 0 || p.byte_offset + p.numel * elem > f->second) {
          return bad(what + ": piece [" + std::to_string(p.byte_offset) + ", +" +
                     std::to_string(p.numel * elem) + ") lies outside " + p.file + " (" +
                     std::to_string(f->second) + " bytes)");
        }
        next += p.numel;
      }
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
  return read_blocks(dir, files, {{0, 0, f.size}}, view, [](const ReadWindow&) { return base::Status::Ok(); })
      .status();
}

base::Status verify_files(const std::string& dir, const CheckpointIndex& index) {
  for (const FileEntry& f : index.files) RETURN_IF_ERROR(verify_file(dir, f));
  return base::Status::Ok();
}

}  // namespace dstrain::runtime::checkpoint
