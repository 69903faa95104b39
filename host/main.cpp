#include "admis/host/cli.h"

#ifdef ADMIS_WITH_JEMALLOC
// jemalloc reads this at start-up. Freed pages are kept for reuse instead of being returned
// to the system: a diffusion step allocates and frees the same large activations every
// time, and returning them made the kernel zero-fill fresh pages on each step (on two CPU
// cores, ADM at 256 px: 1.5x faster, a third less peak memory than glibc's malloc tuned alike).
extern "C" {
extern const char* malloc_conf;
__attribute__((visibility("default"))) const char* malloc_conf = "dirty_decay_ms:-1,muzzy_decay_ms:-1";
}
#endif

int main(int argc, char** argv) { return admis::host::run_cli(argc, argv); }
