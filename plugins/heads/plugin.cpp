// admis_heads: the bundled classification heads of recognition training.
//   arcface, cosface, curricularface   TFace torchkit/head/localfc
//   elastic-arcface, elastic-cosface   ElasticFace utils/losses.py (with the + variant)
//   softmax                            a plain fully connected classifier

#include "admis/sdk/plugin.h"
#include "head_base.h"

ADMIS_PLUGIN("admis_heads", "1.0.0") {
  admis::heads::register_tface_heads(registry);
  admis::heads::register_elastic_heads(registry);
  admis::heads::register_softmax_head(registry);
}
