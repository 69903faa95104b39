#include "admis/host/cli.h"

int main(int argc, char** argv) { return admis::host::run_cli(argc, argv); }
