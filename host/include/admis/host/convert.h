#pragma once
// `admis convert --from FORMAT:PATH --to FORMAT:PATH`: copies a face dataset from one
// format to another through the dataset-reader and dataset-writer plugins of those names.

#include <string>
#include <vector>

#include "admis/host/commands.h"

namespace admis::host {

int cmd_convert(const std::vector<std::string>& args, Globals& g);

}  // namespace admis::host
