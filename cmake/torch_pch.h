// Precompiled header shared by the LibTorch-heavy targets (CMakeLists.txt: dstrain_use_torch).
#pragma once
#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <memory>
#include <string>
#include <vector>
