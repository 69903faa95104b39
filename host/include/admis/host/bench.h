#pragma once
// `admis bench`: throughput figures, with the machine they were measured on.

#include <string>
#include <vector>

#include "admis/host/commands.h"

namespace admis::host {

// "CPU model, N hardware threads, M intra-op threads, LibTorch x.y.z".
std::string machine_description(int threads);
int cmd_bench(const std::vector<std::string>& args, Globals& g);

}  // namespace admis::host
