// Stages that work on single plugins: `forward` (run a plugin on a tensor file) and
// `schedule` (tabulate a scheduler's noise schedule and sampling timesteps).
#include <boost/filesystem.hpp>
#include <fmt/format.h>

#include <fstream>
#include <iostream>

#include "admis/host/forward.h"
#include "admis/host/manifest.h"
#include "admis/host/stages.h"
#include "admis/host/text.h"
#include "admis/host/weights.h"

namespace fs = boost::filesystem;

namespace admis::host {

StageType forward_stage() {
  return StageType{
      "forward",
      "run one plugin on named input tensors (safetensors) and write its named outputs",
      {
          ParamSpec::Plugin("plugin", "", "the plugin to run: {kind: K, plugin: NAME, params: {...}, weights: FILE}"),
          ParamSpec::Path("inputs", "", "safetensors file with the input tensors").required_value(),
          ParamSpec::String("outputs", "outputs.safetensors", "output file name, inside the stage's folder"),
      },
      [](const Params& keys, StageContext& ctx) {
        const PluginSpec& spec = keys.get_plugin("plugin");
        auto plugin = ctx.runtime.create(spec);
        const std::string who = spec.kind + "/" + spec.name;
        StateDict out = forward_plugin(*plugin, read_weights(keys.get_path("inputs")), who);
        const std::string path = (fs::path(ctx.output_dir) / keys.get_string("outputs")).string();
        write_safetensors(out, path, {{"plugin", who}});
        for (const auto& [name, t] : out)
          std::cerr << fmt::format("  {} {} -> {}", name, fmt::join(t.sizes().vec(), "x"), path) << std::endl;
      }};
}

StageType schedule_stage() {
  return StageType{
      "schedule",
      "tabulate a scheduler: betas, alpha_bars and the timesteps its sampling loop visits (safetensors + CSV)",
      {ParamSpec::Plugin("scheduler", "scheduler", "the scheduler plugin")},
      [](const Params& keys, StageContext& ctx) {
        auto plugin = ctx.runtime.create(keys.get_plugin("scheduler"));
        auto& s = dynamic_cast<Scheduler&>(*plugin);
        StateDict out = forward_plugin(s, {}, keys.get_plugin("scheduler").name);
        write_safetensors(out, (fs::path(ctx.output_dir) / "schedule.safetensors").string());
        std::string csv = "step,model_timestep,beta,alpha_bar\n";
        auto betas = out["betas"].to(torch::kFloat64);
        auto alpha_bars = out["alpha_bars"].to(torch::kFloat64);
        auto timesteps = out["model_timesteps"];
        for (std::int64_t i = 0; i < timesteps.size(0); ++i) {
          std::int64_t t = timesteps[i].item<std::int64_t>();
          csv += fmt::format("{},{},{:.9g},{:.9g}\n", i, t, betas[t].item<double>(), alpha_bars[t].item<double>());
        }
        write_file_atomic((fs::path(ctx.output_dir) / "schedule.csv").string(), csv);
        std::cerr << fmt::format("  {} training timesteps, {} sampling steps (first {}, last {})", betas.size(0),
                                 timesteps.size(0), timesteps[0].item<std::int64_t>(),
                                 timesteps[-1].item<std::int64_t>())
                  << std::endl;
      }};
}

}  // namespace admis::host
