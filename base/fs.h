#pragma once
// Directory helpers over POSIX calls. Code that links LibTorch avoids std::filesystem: libtorch.so
// exports its own copies of those symbols, and depending on the toolchain the dynamic linker may
// bind an executable's calls to them, which has crashed (remove_all) on some machines.
#include <string>

#include "base/status.h"

namespace dstrain::base {

// mkdir -p: creates `path` and missing parents; kIOError naming the path on failure.
Status make_dirs(const std::string& path);
// rm -r: removes `path` and everything below it; a missing path is not an error.
Status remove_tree(const std::string& path);
// The directory part of `path` ("." when none).
std::string parent_dir(const std::string& path);

}  // namespace dstrain::base
