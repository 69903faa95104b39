#pragma once
// Registration of the dataset readers and writers, one function per format.
#include "admis/sdk/plugin.h"

namespace admis::datasets {

void register_image_folder(FactoryList& registry);
void register_tfrecord(FactoryList& registry);
void register_recordio(FactoryList& registry);
void register_toy_faces(FactoryList& registry);

}  // namespace admis::datasets
