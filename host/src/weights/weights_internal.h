#pragma once
// Helpers shared by the weights readers and writers (private to host/src/weights).

#include <torch/torch.h>

#include <string>
#include <vector>

namespace admis::host::weights_detail {

enum class Format { TorchZip, TorchLegacy, Safetensors, Unknown };

// Looks at the first bytes of `path`: a zip local header (torch.save >= 1.6), the pickled
// magic number of legacy torch.save (80 02 8a 0a), or a safetensors header (u64 length then
// '{'). Throws admis::Error naming the file when it cannot be opened.
Format sniff_format(const std::string& path);
const char* format_name(Format format);

// "float32", "bfloat16", "int64", ... (the names Python prints after "torch.").
std::string dtype_name(torch::ScalarType dtype);
// "[64, 3, 3, 3]"; "[]" for a scalar.
std::string shape_string(torch::IntArrayRef shape);

// Removes each prefix in turn from the start of `key` when the key starts with it.
std::string strip_prefixes(std::string key, const std::vector<std::string>& prefixes);

// Renames the finished temporary file `tmp` over `path` (atomic on one file system); on
// failure removes `tmp` and throws naming both.
void publish_file(const std::string& tmp, const std::string& path);

}  // namespace admis::host::weights_detail
