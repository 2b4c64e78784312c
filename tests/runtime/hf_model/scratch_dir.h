#pragma once
// Per-test scratch directory (mkdtemp), removed with its contents at the end of the test. Uses
// base::remove_tree rather than std::filesystem, which LibTorch binaries avoid (base/fs.h).
#include <gtest/gtest.h>
#include <stdlib.h>

#include <fstream>
#include <string>

#include "base/fs.h"

namespace dstrain::runtime::hf_model {

class ScratchDir {
 public:
  ScratchDir() {
    std::string tmpl = testing::TempDir() + "dstrain_hf_model_XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) ADD_FAILURE() << "mkdtemp failed for " << tmpl;
    path_ = tmpl;
  }
  ~ScratchDir() { (void)base::remove_tree(path_); }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  void write(const std::string& name, const std::string& text) const {
    std::ofstream out(file(name), std::ios::binary);
    out << text;
    ASSERT_TRUE(out.good()) << file(name);
  }

 private:
  std::string path_;
};

}  // namespace dstrain::runtime::hf_model
