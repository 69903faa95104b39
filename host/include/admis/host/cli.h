#pragma once
namespace admis::host {
// The whole `admis` command line; returns the process exit status.
int run_cli(int argc, char** argv);
}  // namespace admis::host
