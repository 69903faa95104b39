// The stage types a manifest can name, in the order `admis` documents them.
#include <fmt/format.h>

#include "admis/host/manifest.h"
#include "admis/host/stages.h"
#include "admis/host/text.h"

namespace admis::host {

const std::vector<StageType>& stage_types() {
  static const std::vector<StageType> types = {forward_stage(),          schedule_stage(),        train_recognition_stage(),
                                               contexts_stage(),         train_generator_stage(), sample_stage(),
                                               verification_pairs_stage(), evaluate_stage(), report_stage()};
  return types;
}

const StageType& find_stage_type(const std::string& name, const std::string& where) {
  std::vector<std::string> names;
  for (const auto& t : stage_types()) {
    if (t.name == name) return t;
    names.push_back(t.name);
  }
  throw Error(where, fmt::format("unknown stage type '{}'{}; stage types are: {}", name, did_you_mean(name, names),
                                 join(names, ", ")));
}

}  // namespace admis::host
