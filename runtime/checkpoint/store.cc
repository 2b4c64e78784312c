#include "runtime/checkpoint/store.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "base/fs.h"
#include "runtime/checkpoint/index.h"

namespace dstrain::runtime::checkpoint {
namespace {

constexpr const char* kPrefix = "step-";
constexpr size_t kDigits = 8;

// The step of "step-NNNNNNNN" (with `suffix` after the digits), or -1.
int64_t parse_step_name(const std::string& name, const std::string& suffix) {
  const size_t prefix = std::strlen(kPrefix);
  if (name.size() != prefix + kDigits + suffix.size() || name.rfind(kPrefix, 0) != 0) return -1;
  if (name.compare(prefix + kDigits, suffix.size(), suffix) != 0) return -1;
  int64_t step = 0;
  for (size_t i = prefix; i < prefix + kDigits; ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    step = step * 10 + (name[i] - '0');
  }
  return step;
}

bool is_dir(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

base::StatusOr<std::vector<std::string>> list_dir(const std::string& root) {
  std::vector<std::string> names;
  DIR* d = ::opendir(root.c_str());
  if (d == nullptr) {
    if (errno == ENOENT) return names;
    return base::Status::IOError(root + ": cannot list: " + std::strerror(errno));
  }
  while (const dirent* e = ::readdir(d)) names.emplace_back(e->d_name);
  ::closedir(d);
  return names;
}

}  // namespace

std::string checkpoints_dir(const std::string& run_dir) { return run_dir + "/checkpoints"; }

std::string step_dir_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%s%08lld", kPrefix, static_cast<long long>(step));
  return buf;
}

base::StatusOr<std::vector<int64_t>> committed_steps(const std::string& root) {
  ASSIGN_OR_RETURN(std::vector<std::string> names, list_dir(root));
  std::vector<int64_t> steps;
  for (const std::string& n : names) {
    const int64_t s = parse_step_name(n, "");
    if (s >= 0 && is_dir(root + "/" + n)) steps.push_back(s);
  }
  std::sort(steps.rbegin(), steps.rend());
  return steps;
}

base::StatusOr<std::optional<std::string>> read_latest(const std::string& root) {
  const std::string path = root + "/" + kLatestFile;
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return std::optional<std::string>();
  ASSIGN_OR_RETURN(std::string text, read_text_file(path));
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return std::optional<std::string>(text);
}

base::Status commit(CheckpointIo& io, const std::string& root, int64_t step,
                    const std::string& index_json) {
  const std::string name = step_dir_name(step);
  const std::string tmp = root + "/" + name + ".tmp";
  RETURN_IF_ERROR(write_file(io, tmp + "/" + kIndexFile, index_json));
  RETURN_IF_ERROR(sync_dir(tmp));
  // A checkpoint of the same step from an earlier attempt is replaced by this one.
  RETURN_IF_ERROR(base::remove_tree(root + "/" + name));
  RETURN_IF_ERROR(rename_path(tmp, root + "/" + name));
  RETURN_IF_ERROR(sync_dir(root));
  const std::string latest_tmp = root + "/" + kLatestFile + ".tmp";
  RETURN_IF_ERROR(write_file(io, latest_tmp, name + "\n"));
  RETURN_IF_ERROR(rename_path(latest_tmp, root + "/" + kLatestFile));
  return sync_dir(root);
}

base::Status delete_old_checkpoints(const std::string& root, int64_t keep) {
  ASSIGN_OR_RETURN(std::vector<int64_t> steps, committed_steps(root));
  for (size_t i = static_cast<size_t>(std::max<int64_t>(1, keep)); i < steps.size(); ++i) {
    RETURN_IF_ERROR(base::remove_tree(root + "/" + step_dir_name(steps[i])));
  }
  return base::Status::Ok();
}

base::Status delete_unfinished(const std::string& root) {
  ASSIGN_OR_RETURN(std::vector<std::string> names, list_dir(root));
  for (const std::string& n : names) {
    if (parse_step_name(n, ".tmp") >= 0) RETURN_IF_ERROR(base::remove_tree(root + "/" + n));
  }
  return base::Status::Ok();
}

base::Status apply_retention(const std::string& root, int64_t keep) {
  RETURN_IF_ERROR(delete_old_checkpoints(root, keep));
  return delete_unfinished(root);
}

base::Status verify_checkpoint(const std::string& dir) {
  ASSIGN_OR_RETURN(CheckpointIndex index, read_index(dir));
  return verify_files(dir, index);
}

base::StatusOr<std::optional<std::string>> find_resumable(
    const std::vector<std::string>& dirs, const std::function<void(const std::string&)>& warn,
    const std::function<ResumeAttempt(const std::string&)>& attempt) {
  std::string skipped;
  bool changed = false;
  for (const std::string& dir : dirs) {
    const ResumeAttempt a = attempt(dir);
    if (a.status.ok()) {
      if (!skipped.empty()) warn(skipped + "; resuming from " + dir);
      return std::optional<std::string>(dir);
    }
    if (!a.corrupt) return a.status;
    changed = changed || a.changed_state;
    if (!skipped.empty()) warn(skipped);
    skipped = "checkpoint " + dir + " is corrupt (" + a.status.message() + ")";
  }
  if (skipped.empty()) return std::optional<std::string>();
  if (!changed) {
    warn(skipped + "; no usable checkpoint left, starting from scratch");
    return std::optional<std::string>();
  }
  warn(skipped);
  return base::Status::BadInput(
      "no usable checkpoint left, and the failed load had already overwritten part of the model "
      "and optimizer state, so this run cannot start from scratch either: rerun with --resume "
      "never to start afresh");
}

}  // namespace dstrain::runtime::checkpoint
