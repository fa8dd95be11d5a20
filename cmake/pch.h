// Precompiled header: the heavy, stable headers every translation unit needs.
#pragma once
#include <torch/torch.h>
#include <fmt/format.h>
#include <string>
#include <vector>
#include <memory>
#include <map>
#include <optional>
