#pragma once
// What each `admis` command is built from: the global options and the parser that adds
// them to a command's own options. Commands live one per function; the table in cli.cpp
// names them.

#include <boost/program_options.hpp>

#include <string>
#include <vector>

#include "admis/host/runtime.h"

namespace admis::host {

struct Globals {
  RunSettings settings;
  std::vector<std::string> plugin_paths;
};

boost::program_options::options_description global_options(Globals& g);

// Parses a command's options plus the globals from `args`; prints `usage` and the options
// and returns false on --help; throws admis::Error (with the usage) on bad options.
bool parse(const std::vector<std::string>& args, boost::program_options::options_description& own,
           boost::program_options::positional_options_description& pos, Globals& g,
           boost::program_options::variables_map& vm, const std::string& usage);

}  // namespace admis::host
