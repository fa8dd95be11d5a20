// The converters of each published format (internal to convert.cpp's registry; see convert.h).
#pragma once
#include "datasets/convert.h"

namespace cm::data {

Converter make_cifar10_converter(const ConvertOptions& o);        // convert_cifar10.cpp
Converter make_idx_converter(const ConvertOptions& o);            // convert_idx.cpp (Fashion-MNIST, MNIST)
Converter make_imagenet_npz_converter(const ConvertOptions& o);   // convert_npz.cpp (downsampled ImageNet)
Converter make_lsun_converter(const ConvertOptions& o);           // convert_lmdb.cpp
Converter make_imagenet_converter(const ConvertOptions& o);       // convert_folder.cpp (ILSVRC2012 train)
Converter make_folder_converter(const ConvertOptions& o);         // convert_folder.cpp (any image folder)

// Shared helpers of the converters.
// "train" or "test"; anything else is an error naming the option.
void check_split(const std::string& split);
// Wraps an exception from reading record `index` of `file` so the message names both.
[[noreturn]] void rethrow_with_record(const std::exception& e, const std::string& file, int64_t index);

}  // namespace cm::data
