// The bundled scheduler library: noise schedules and reverse-process steps.
#include "admis/sdk/plugin.h"

#include "scheduler_common.h"

ADMIS_PLUGIN("admis_schedulers", "1.0.0") {
  admis::schedulers::register_ddpm(registry);
  admis::schedulers::register_ddim(registry);
  admis::schedulers::register_ddim_admis(registry);
  admis::schedulers::register_respaced_ddpm(registry);
}
