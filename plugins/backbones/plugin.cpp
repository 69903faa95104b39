// admis_backbones: the bundled face-recognition backbones.
//   ir             TFace torchkit/backbone/model_irse.py Backbone (IR and IR-SE, 18 to 200 layers)
//   iresnet        ElasticFace backbones/iresnet.py (insightface's iresnet, optional SE)
//   mobilefacenet  TFace torchkit/backbone/model_mobilefacenet.py (GDC or GNAP output)

#include "admis/sdk/plugin.h"

#include "backbone_base.h"

ADMIS_PLUGIN("admis_backbones", "1.0.0") {
  admis::backbones::register_tface_irse(registry);
  admis::backbones::register_iresnet(registry);
  admis::backbones::register_mobilefacenet(registry);
}
