// admis_datasets: face dataset readers and writers.
//   image-folder   <root>/<identity>/<file> (torchvision ImageFolder layout)
//   tfrecord       TFace shards NAME-%05d.tfrecord + NAME.index (tf.train.Example, 'image' = JPEG)
//   recordio       insightface/MXNet PREFIX.rec + PREFIX.idx (IRHeader, record 0 = dataset header)
//   toy-faces      (reader only) faces rendered procedurally from a seed; reads no data

#include "admis/sdk/plugin.h"
#include "datasets.h"

ADMIS_PLUGIN("admis_datasets", "1.0.0") {
  admis::datasets::register_image_folder(registry);
  admis::datasets::register_tfrecord(registry);
  admis::datasets::register_recordio(registry);
  admis::datasets::register_toy_faces(registry);
}
