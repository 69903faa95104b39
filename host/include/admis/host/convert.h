#pragma once
// `admis convert --from FORMAT:PATH --to FORMAT:PATH`: copies a face dataset from one
// format to another through the dataset-reader and dataset-writer plugins of those names.

#include <string>
#include <vector>

#include "admis/host/commands.h"

namespace admis::host {

// A dataset on the command line: FORMAT:PATH, FORMAT naming a dataset reader/writer.
struct DatasetSpec {
  std::string format, path;
};
DatasetSpec parse_dataset_spec(const std::string& text, const std::string& option, const std::string& command);

int cmd_convert(const std::vector<std::string>& args, Globals& g);

}  // namespace admis::host
