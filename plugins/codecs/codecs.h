#pragma once
// What the bundled codecs share: the factories, one per codec (defined next to each), and
// the check of the batches they receive.

#include <cstdint>
#include <string>

#include "admis/sdk.h"

namespace admis::codecs {

// Checks that `t` is a defined floating-point [N, channels, H, W] batch with N >= 1 and H, W
// positive multiples of `factor`; otherwise throws an Error naming `who` and `what`
// ("images", "latents") with the expected and the received shape.
void check_batch(const torch::Tensor& t, std::int64_t channels, std::int64_t factor, const std::string& who,
                 const std::string& what);

void register_vq_f4(FactoryList& registry);  // vq-f4
void register_pixel(FactoryList& registry);  // pixel

}  // namespace admis::codecs
