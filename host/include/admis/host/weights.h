#pragma once
// Weights I/O: torch.save zip checkpoints (read), safetensors (read and write), strict
// loading into modules with a report by key name.

#include <map>
#include <ostream>
#include <string>
#include <vector>

#include "admis/sdk/host.h"

namespace admis::host {

// torch.save zip archive (.pt/.pth/.ckpt). Accepts an OrderedDict or plain dict state
// dict, or a dict whose 'state_dict' entry is one (other entries are ignored); nested
// dicts are flattened with '.' joins. Legacy (pre-1.6) files are refused with an error
// telling how to convert them.
StateDict read_torch_save(const std::string& path);

StateDict read_safetensors(const std::string& path, std::map<std::string, std::string>* metadata = nullptr);
// Atomic: writes PATH.tmp-<pid> and renames it over PATH.
void write_safetensors(const StateDict& tensors, const std::string& path,
                       const std::map<std::string, std::string>& metadata = {});

// Dispatches on the file's content (zip / safetensors header / legacy pickle).
StateDict read_weights(const std::string& path);

// The module's parameters and buffers by dotted name (as state_dict() in Python).
StateDict module_state_dict(const torch::nn::Module& module);

// Copies `weights` into `module`, converting dtype and device. With options.strict, throws
// admis::Error naming `source` and listing every missing / unexpected / mismatched key.
LoadReport load_state_dict(torch::nn::Module& module, const StateDict& weights, const LoadOptions& options,
                           const std::string& source);

// `admis weights inspect`: keys, dtypes, shapes, and total parameter count.
void inspect_weights(const std::string& path, std::ostream& out);
// `admis weights convert`: any readable format -> safetensors, stripping prefixes.
void convert_weights(const std::string& in, const std::string& out, const std::vector<std::string>& strip_prefixes);

}  // namespace admis::host
