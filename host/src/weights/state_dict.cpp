// Format dispatch, module state dicts, strict loading with a report by key, and the
// `admis weights inspect / convert` commands.

#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>

#include "admis/host/weights.h"
#include "admis/sdk/error.h"
#include "weights_internal.h"

namespace admis::host {

namespace weights_detail {

Format sniff_format(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path, fmt::format("cannot open: {}", std::strerror(errno)));
  unsigned char head[9] = {};
  in.read(reinterpret_cast<char*>(head), sizeof head);
  const auto got = static_cast<std::size_t>(in.gcount());
  if (got >= 4 && head[0] == 'P' && head[1] == 'K' && head[2] == 3 && head[3] == 4) return Format::TorchZip;
  if (got >= 4 && head[0] == 0x80 && head[1] == 0x02 && head[2] == 0x8a && head[3] == 0x0a) return Format::TorchLegacy;
  if (got == 9 && head[8] == '{') {
    std::uint64_t header_length = 0;
    for (int i = 7; i >= 0; --i) header_length = (header_length << 8) | head[i];
    in.clear();
    in.seekg(0, std::ios::end);
    const auto size = static_cast<std::uint64_t>(in.tellg());
    if (header_length >= 2 && header_length <= size - 8) return Format::Safetensors;
  }
  return Format::Unknown;
}

const char* format_name(Format format) {
  switch (format) {
    case Format::TorchZip: return "torch.save zip archive";
    case Format::TorchLegacy: return "legacy torch.save file";
    case Format::Safetensors: return "safetensors";
    case Format::Unknown: return "unknown format";
  }
  return "?";
}

std::string dtype_name(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat32: return "float32";
    case torch::kFloat16: return "float16";
    case torch::kBFloat16: return "bfloat16";
    case torch::kFloat64: return "float64";
    case torch::kInt64: return "int64";
    case torch::kInt32: return "int32";
    case torch::kInt16: return "int16";
    case torch::kInt8: return "int8";
    case torch::kUInt8: return "uint8";
    case torch::kBool: return "bool";
    case torch::kComplexFloat: return "complex64";
    case torch::kComplexDouble: return "complex128";
    default: return c10::toString(dtype);
  }
}

std::string shape_string(torch::IntArrayRef shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

std::string strip_prefixes(std::string key, const std::vector<std::string>& prefixes) {
  for (const auto& prefix : prefixes) {
    if (!prefix.empty() && key.compare(0, prefix.size(), prefix) == 0) key.erase(0, prefix.size());
  }
  return key;
}

}  // namespace weights_detail

using namespace weights_detail;

namespace {

// Lists stay readable: the first entries by name, then how many more.
constexpr std::size_t kListedPerKind = 25;

void append_list(std::string& message, const char* title, const std::vector<std::string>& keys) {
  if (keys.empty()) return;
  message += fmt::format("\n  {} ({}):", title, keys.size());
  const std::size_t shown = std::min(keys.size(), kListedPerKind);
  for (std::size_t i = 0; i < shown; ++i) message += "\n    " + keys[i];
  if (keys.size() > shown) message += fmt::format("\n    ... and {} more", keys.size() - shown);
}

// When a checkpoint key is a module key behind an extra leading component (or the other
// way round), the fix is a strip prefix: say so.
std::string prefix_hint(const std::vector<std::string>& missing, const std::vector<std::string>& unexpected) {
  const std::set<std::string> missing_set(missing.begin(), missing.end());
  for (const auto& key : unexpected) {
    for (std::size_t dot = key.find('.'); dot != std::string::npos; dot = key.find('.', dot + 1)) {
      if (missing_set.count(key.substr(dot + 1))) {
        return fmt::format("\n  hint: checkpoint keys such as '{}' carry the prefix '{}'; add it to strip_prefixes",
                           key, key.substr(0, dot + 1));
      }
    }
  }
  return {};
}

}  // namespace

StateDict read_weights(const std::string& path) {
  switch (sniff_format(path)) {
    case Format::TorchZip:
    case Format::TorchLegacy: return read_torch_save(path);  // refuses legacy files with how to convert
    case Format::Safetensors: return read_safetensors(path);
    case Format::Unknown: break;
  }
  throw Error(path, "unrecognised weights format: expected a torch.save zip archive (.pt/.pth/.ckpt) or a "
                    "safetensors file");
}

StateDict module_state_dict(const torch::nn::Module& module) {
  StateDict out;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    if (item.value().defined()) out.emplace(item.key(), item.value());
  }
  for (const auto& item : module.named_buffers(/*recurse=*/true)) {
    if (item.value().defined()) out.emplace(item.key(), item.value());
  }
  return out;
}

StateDict cpu_copy(const StateDict& tensors) {
  StateDict out;
  for (const auto& [k, t] : tensors) out[k] = t.detach().to(torch::kCPU).contiguous();
  return out;
}

StateDict cpu_state_dict(const torch::nn::Module& module) { return cpu_copy(module_state_dict(module)); }

LoadReport load_state_dict(torch::nn::Module& module, const StateDict& weights, const LoadOptions& options,
                           const std::string& source) {
  const StateDict targets = module_state_dict(module);
  const std::set<std::string> ignored(options.ignore_keys.begin(), options.ignore_keys.end());
  LoadReport report;

  // Checkpoint entries under the names they are compared with (prefixes stripped).
  std::map<std::string, std::pair<std::string, torch::Tensor>> renamed;
  for (const auto& [key, tensor] : weights) {
    std::string name = strip_prefixes(key, options.strip_prefixes);
    if (ignored.count(name)) continue;
    auto [it, inserted] = renamed.emplace(name, std::make_pair(key, tensor));
    if (!inserted) {
      report.unexpected.push_back(
          fmt::format("{} (becomes '{}' after stripping prefixes, as {} does)", key, name, it->second.first));
    }
  }
  for (const auto& [name, target] : targets) {
    auto it = renamed.find(name);
    if (it == renamed.end()) {
      report.missing.push_back(name);
    } else if (it->second.second.sizes() != target.sizes()) {
      report.mismatched.push_back(fmt::format("{}: checkpoint {} vs module {}", name,
                                              shape_string(it->second.second.sizes()), shape_string(target.sizes())));
    }
  }
  for (const auto& [name, entry] : renamed) {
    if (!targets.count(name)) report.unexpected.push_back(name);
  }

  if (options.strict && !report.ok()) {
    // Nothing is copied: a failed strict load leaves the module as it was.
    std::string message = fmt::format(
        "weights do not match the module: {} missing, {} unexpected, {} shape mismatch{} ({} checkpoint tensors, "
        "{} module tensors)",
        report.missing.size(), report.unexpected.size(), report.mismatched.size(),
        report.mismatched.size() == 1 ? "" : "es", weights.size(), targets.size());
    append_list(message, "missing keys (in the module, not in the checkpoint)", report.missing);
    append_list(message, "unexpected keys (in the checkpoint, not in the module)", report.unexpected);
    append_list(message, "shape mismatches", report.mismatched);
    message += prefix_hint(report.missing, report.unexpected);
    throw Error(source, message);
  }

  torch::NoGradGuard no_grad;
  for (const auto& [name, target] : targets) {
    auto it = renamed.find(name);
    if (it == renamed.end() || it->second.second.sizes() != target.sizes()) continue;
    // copy_ converts dtype (float16 checkpoints into float32 modules) and device.
    target.copy_(it->second.second);
    ++report.loaded;
  }
  return report;
}

void inspect_weights(const std::string& path, std::ostream& out) {
  const Format format = sniff_format(path);
  std::map<std::string, std::string> metadata;
  const StateDict weights = format == Format::Safetensors ? read_safetensors(path, &metadata) : read_weights(path);

  std::size_t key_width = 3, dtype_width = 5;
  for (const auto& [key, t] : weights) {
    key_width = std::max(key_width, key.size());
    dtype_width = std::max(dtype_width, dtype_name(t.scalar_type()).size());
  }
  out << fmt::format("{}: {}, {} tensors\n", path, format_name(format), weights.size());
  for (const auto& [k, v] : metadata) out << fmt::format("metadata {} = {}\n", k, v);
  out << fmt::format("{:<{}}  {:<{}}  {}\n", "key", key_width, "dtype", dtype_width, "shape");
  std::uint64_t values = 0, bytes = 0;
  for (const auto& [key, t] : weights) {
    out << fmt::format("{:<{}}  {:<{}}  {}\n", key, key_width, dtype_name(t.scalar_type()), dtype_width,
                       shape_string(t.sizes()));
    values += static_cast<std::uint64_t>(t.numel());
    bytes += static_cast<std::uint64_t>(t.nbytes());
  }
  out << fmt::format("total: {} values (parameters and buffers) in {} tensors, {} bytes ({:.2f} MiB)\n", values,
                     weights.size(), bytes, static_cast<double>(bytes) / (1024.0 * 1024.0));
}

void convert_weights(const std::string& in, const std::string& out, const std::vector<std::string>& strip) {
  const StateDict weights = read_weights(in);
  StateDict renamed;
  std::map<std::string, std::string> origin;
  for (const auto& [key, tensor] : weights) {
    std::string name = strip_prefixes(key, strip);
    if (name.empty()) throw Error(in, fmt::format("key '{}' becomes empty after stripping prefixes", key));
    auto [it, inserted] = origin.emplace(name, key);
    if (!inserted) {
      throw Error(in, fmt::format("keys '{}' and '{}' both become '{}' after stripping prefixes", it->second, key,
                                  name));
    }
    renamed.emplace(std::move(name), tensor);
  }
  const auto slash = in.find_last_of('/');
  write_safetensors(renamed, out,
                    {{"format", "pt"}, {"converted_from", slash == std::string::npos ? in : in.substr(slash + 1)}});
}

void weights_detail::publish_file(const std::string& tmp, const std::string& path) {
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw Error(path, fmt::format("cannot rename {} over it: {}", tmp, std::strerror(err)));
  }
}

}  // namespace admis::host
