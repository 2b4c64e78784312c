// Precompiled header shared by the LibTorch-heavy targets (CMakeLists.txt: dstrain_use_torch).
#pragma once
#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <string>
#include <vector>
#include <memory>
