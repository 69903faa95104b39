#pragma once
// The denoiser family's factories, one per reference network (defined next to each).

#include "admis/sdk.h"

namespace admis::denoisers {

void register_idiff_unet(FactoryList& registry);  // idiff-unet
void register_adm_unet(FactoryList& registry);    // adm-unet

}  // namespace admis::denoisers
