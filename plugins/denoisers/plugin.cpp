// admis_denoisers: the bundled diffusion denoisers.
//   idiff-unet  IDiff-Face ConditionalUNet as ADMIS uses it
//               (generative_model_training/models/diffusion/unet.py): CA, AdaGN, AddPlusGN
//               and DiffAE conditioning on an identity embedding, or unconditional
//   adm-unet    guided-diffusion ADM UNetModel (guided_diffusion/unet.py, create_model) as DCFace's
//               unconditional FFHQ generator ffhq_10m.pt uses it, with learned variance

#include "admis/sdk/plugin.h"

#include "denoisers.h"

ADMIS_PLUGIN("admis_denoisers", "1.0.0") {
  admis::denoisers::register_idiff_unet(registry);
  admis::denoisers::register_adm_unet(registry);
}
