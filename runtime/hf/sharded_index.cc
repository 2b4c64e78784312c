#include "runtime/hf/sharded_index.h"

#include <sys/stat.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <utility>

#include "runtime/hf/json_file.h"

namespace dstrain::runtime::hf {
namespace {

using nlohmann::json;

constexpr char kShardSuffix[] = ".safetensors";

std::string parent_dir(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return "";
  return slash == 0 ? "/" : path.substr(0, slash);
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

// Reads metadata.total_size; HF writers emit an integer, a few converters an integral float.
base::StatusOr<std::optional<uint64_t>> parse_total_size(const json& root,
                                                         const std::string& path) {
  const auto meta = root.find("metadata");
  if (meta == root.end() || meta->is_null()) return std::optional<uint64_t>();
  if (!meta->is_object()) {
    return base::Status::BadInput(path + ": \"metadata\" is a JSON " + meta->type_name() +
                                  ", expected an object");
  }
  const auto total = meta->find("total_size");
  if (total == meta->end()) return std::optional<uint64_t>();
  if (total->is_number_unsigned()) return std::optional<uint64_t>(total->get<uint64_t>());
  if (total->is_number_float()) {
    const double v = total->get<double>();
    if (v >= 0 && v < 1.8e19 && std::floor(v) == v) {
      return std::optional<uint64_t>(static_cast<uint64_t>(v));
    }
  }
  return base::Status::BadInput(
      path + ": \"metadata.total_size\" is " +
      (total->is_number() ? total->dump() : std::string("a JSON ") + total->type_name()) +
      ", expected a non-negative integer");
}

}  // namespace

std::string check_shard_name(const std::string& name) {
  const std::string suffix = kShardSuffix;
  if (name.empty()) return "is empty";
  if (name.find('\0') != std::string::npos) return "contains a NUL byte";
  if (name.find('/') != std::string::npos)
    return "contains '/' (must be a file name in the index's directory)";
  if (name.find("..") != std::string::npos) return "contains \"..\"";
  if (name.size() <= suffix.size() ||
      name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) {
    return "does not end in " + suffix;
  }
  return "";
}

base::StatusOr<ShardedCheckpoint> ShardedCheckpoint::open_index(const std::string& index_path) {
  ASSIGN_OR_RETURN(json root, read_json_object_file(index_path));
  ShardedCheckpoint ckpt;
  ckpt.source_ = index_path;
  ASSIGN_OR_RETURN(ckpt.total_size_, parse_total_size(root, index_path));

  const auto weight_map = root.find("weight_map");
  if (weight_map == root.end() || !weight_map->is_object()) {
    return base::Status::BadInput(index_path + ": missing object \"weight_map\"");
  }
  // Every check on names comes before any shard is opened.
  std::map<std::string, size_t> shard_ids;  // shard file name -> position in shards_
  for (const auto& [tensor, shard] : weight_map->items()) {
    if (!shard.is_string()) {
      return base::Status::BadInput(index_path + ": tensor " + tensor + ": shard is a JSON " +
                                    shard.type_name() + ", expected a file name");
    }
    const std::string name = shard.get<std::string>();
    const std::string problem = check_shard_name(name);
    if (!problem.empty()) {
      return base::Status::BadInput(index_path + ": tensor " + tensor + ": shard name " +
                                    json(name).dump() + " " + problem);
    }
    shard_ids.emplace(name, shard_ids.size());
  }

  const std::string dir = parent_dir(index_path);
  std::vector<std::string> shard_names(shard_ids.size());
  for (const auto& [name, id] : shard_ids) shard_names[id] = name;
  ckpt.shards_.reserve(shard_names.size());
  for (const std::string& name : shard_names) {
    auto shard = SafetensorsFile::open(join_path(dir, name));
    if (!shard.ok()) return shard.status().with_context(index_path);
    ckpt.shards_.push_back(std::move(shard).value());
  }

  for (const auto& [tensor, shard] : weight_map->items()) {
    const size_t id = shard_ids.at(shard.get<std::string>());
    const SafetensorsFile& file = ckpt.shards_[id];
    const TensorInfo* info = file.find(tensor);
    if (info == nullptr) {
      return base::Status::BadInput(index_path + ": tensor " + tensor + " is mapped to " +
                                    file.path() + ", which does not contain it");
    }
    ckpt.refs_.emplace(tensor,
                       std::make_pair(id, static_cast<size_t>(info - file.tensors().data())));
  }
  return ckpt;
}

base::StatusOr<ShardedCheckpoint> ShardedCheckpoint::open_single(
    const std::string& safetensors_path) {
  ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::open(safetensors_path));
  ShardedCheckpoint ckpt;
  ckpt.source_ = safetensors_path;
  for (size_t i = 0; i < file.tensors().size(); ++i) {
    ckpt.refs_.emplace(file.tensors()[i].name, std::make_pair(size_t{0}, i));
  }
  ckpt.shards_.push_back(std::move(file));
  return ckpt;
}

std::vector<std::string> ShardedCheckpoint::names() const {
  std::vector<std::string> out;
  out.reserve(refs_.size());
  for (const auto& [name, ref] : refs_) out.push_back(name);
  return out;
}

std::optional<TensorRef> ShardedCheckpoint::find(const std::string& name) const {
  const auto it = refs_.find(name);
  if (it == refs_.end()) return std::nullopt;
  const SafetensorsFile& file = shards_[it->second.first];
  return TensorRef{&file, &file.tensors()[it->second.second]};
}

base::StatusOr<TensorRef> ShardedCheckpoint::lookup(const std::string& name) const {
  std::optional<TensorRef> ref = find(name);
  if (!ref) return base::Status::BadInput(source_ + ": no tensor named " + name);
  return *ref;
}

base::StatusOr<ShardedCheckpoint> open_checkpoint_dir(const std::string& dir) {
  const std::string single = join_path(dir, kSingleFileName);
  if (exists(single)) return ShardedCheckpoint::open_single(single);
  const std::string index = join_path(dir, kIndexFileName);
  if (exists(index)) return ShardedCheckpoint::open_index(index);
  return base::Status::BadInput(dir + ": no " + kSingleFileName + " and no " + kIndexFileName +
                                " (not a Hugging Face checkpoint directory)");
}

}  // namespace dstrain::runtime::hf
