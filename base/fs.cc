#include "base/fs.h"

#include <ftw.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace dstrain::base {

Status make_dirs(const std::string& path) {
  if (path.empty()) return Status::Ok();
  std::string prefix;
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    prefix = path.substr(0, pos);
    if (prefix.empty() || mkdir(prefix.c_str(), 0755) == 0 || errno == EEXIST) continue;
    return Status::IOError(path + ": cannot create directory " + prefix + ": " +
                           std::strerror(errno));
  }
  struct stat st {};
  if (stat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return Status::IOError(path + ": exists and is not a directory");
  }
  return Status::Ok();
}

namespace {
int remove_entry(const char* p, const struct stat*, int, struct FTW*) { return std::remove(p); }
}  // namespace

Status remove_tree(const std::string& path) {
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0) return Status::Ok();
  // Depth first (FTW_DEPTH) so directories are empty when removed; links are not followed.
  if (nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0) {
    return Status::IOError(path + ": cannot remove: " + std::strerror(errno));
  }
  return Status::Ok();
}

std::string parent_dir(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace dstrain::base
