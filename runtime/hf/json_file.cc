#include "runtime/hf/json_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <set>
#include <vector>

#include "runtime/hf/unique_fd.h"

namespace dstrain::runtime::hf {
namespace {

using nlohmann::json;

base::StatusOr<std::string> read_small_file(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    return base::Status::BadInput(path + ": cannot open: " + std::strerror(errno));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    return base::Status::IOError(path + ": fstat: " + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) return base::Status::BadInput(path + ": not a regular file");
  if (static_cast<uint64_t>(st.st_size) > kMaxJsonBytes) {
    return base::Status::BadInput(path + ": " + std::to_string(st.st_size) +
                                  " bytes, more than the " + std::to_string(kMaxJsonBytes) +
                                  " allowed for a JSON file");
  }
  std::string text(static_cast<size_t>(st.st_size), '\0');
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::read(fd.get(), text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return base::Status::IOError(path + ": read: " + std::strerror(errno));
    if (n == 0) break;  // shrank since fstat; parse what is there
    done += static_cast<size_t>(n);
  }
  text.resize(done);
  return text;
}

// Counts brackets outside strings, so it bounds the parser's depth on any text (the parser itself
// reports unbalanced ones).
base::Status check_nesting(const std::string& text, const std::string& origin) {
  int depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (const char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) {
        return base::Status::BadInput(origin + ": JSON nested deeper than " +
                                      std::to_string(kMaxJsonDepth) + " levels");
      }
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return base::Status::Ok();
}

}  // namespace

base::StatusOr<json> parse_json_strict(const std::string& text, const std::string& origin) {
  RETURN_IF_ERROR(check_nesting(text, origin));
  // One set of seen keys per open object, innermost last.
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  auto on_event = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
        open_objects.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case json::parse_event_t::key:
        if (!open_objects.empty() &&
            !open_objects.back().insert(parsed.get<std::string>()).second && duplicate.empty()) {
          duplicate = parsed.get<std::string>();
        }
        break;
      default:
        break;
    }
    return true;
  };
  json value;
  try {
    value = json::parse(text, on_event);
  } catch (const json::exception& e) {
    return base::Status::BadInput(origin + ": invalid JSON: " + e.what());
  }
  if (!duplicate.empty()) {
    return base::Status::BadInput(origin + ": key \"" + duplicate +
                                  "\" appears twice in one object");
  }
  return value;
}

base::StatusOr<json> read_json_object_file(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, read_small_file(path));
  ASSIGN_OR_RETURN(json value, parse_json_strict(text, path));
  if (!value.is_object()) {
    return base::Status::BadInput(path + ": top level is a JSON " + value.type_name() +
                                  ", expected an object");
  }
  return value;
}

base::StatusOr<json> read_config_json(const std::string& hf_dir) {
  return read_json_object_file(join_path(hf_dir, "config.json"));
}

std::string join_path(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  return dir.back() == '/' ? dir + name : dir + "/" + name;
}

}  // namespace dstrain::runtime::hf
