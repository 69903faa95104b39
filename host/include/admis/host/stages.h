#pragma once
// Stage types, one function each (host/src/stages/); stage_list.cpp collects them.

#include "admis/host/manifest.h"

namespace admis::host {

StageType forward_stage();   // run one plugin on a tensor file
StageType schedule_stage();  // tabulate a scheduler
StageType train_recognition_stage();  // train a face recognizer (train_recognition.h)
StageType evaluate_stage();  // face verification on insightface .bin sets
StageType verification_pairs_stage();  // an insightface .bin of same/different pairs from a dataset
StageType contexts_stage();  // build a context source (e.g. ddpm-faces' database) once
StageType train_generator_stage();  // train an identity-conditioned diffusion model (train_generator.h)
StageType sample_stage();  // sample synthetic identities (generation.h)
StageType report_stage();  // a report of the run: results table, grids, curves, timings

}  // namespace admis::host
