// The `report` stage: gathers what earlier stages of the same run wrote into one report
// (report.md and report.html in the stage's folder): the verification results in the layout
// of the ADMIS README table, sample grids per method, training curves, ROC curves and the
// time each stage took. It reads the other stages' folders and the run's
// manifest.resolved.yaml (for the stage order and the recognizers' backbone and head).
#include <boost/filesystem.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <yaml-cpp/yaml.h>

#include <fstream>
#include <iostream>
#include <map>
#include <sstream>

#include "admis/host/bench.h"
#include "admis/host/manifest.h"
#include "admis/host/plots.h"
#include "admis/host/stages.h"
#include "admis/host/text.h"

namespace fs = boost::filesystem;

namespace admis::host {

namespace {

std::string read_file(const fs::path& path) {
  std::ifstream in(path.string(), std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// A CSV file with a header row, as columns of numbers by name.
std::map<std::string, std::vector<double>> read_csv_columns(const fs::path& path) {
  std::map<std::string, std::vector<double>> columns;
  std::istringstream in(read_file(path));
  std::string line;
  if (!std::getline(in, line)) return columns;
  std::vector<std::string> names;
  std::stringstream header(line);
  for (std::string cell; std::getline(header, cell, ',');) names.push_back(cell);
  while (std::getline(in, line)) {
    std::stringstream row(line);
    std::size_t i = 0;
    for (std::string cell; std::getline(row, cell, ',') && i < names.size(); ++i) {
      char* end = nullptr;
      const double v = std::strtod(cell.c_str(), &end);
      columns[names[i]].push_back(end != cell.c_str() ? v : std::nan(""));
    }
  }
  return columns;
}

struct Row {
  std::string label, evaluation, training, samples;
  nlohmann::json results;  // the evaluate stage's results.json
  std::string backbone = "?", head = "?", identities = "?";
};

std::string html_escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else if (c == '&') out += "&amp;";
    else out += c;
  }
  return out;
}

// A plugin entry of the resolved manifest as "name (k=v, ...)" for the given keys.
std::string describe_plugin(const YAML::Node& plugin, const std::vector<std::string>& keys) {
  if (!plugin || !plugin["plugin"]) return "?";
  std::string text = plugin["plugin"].Scalar();
  std::vector<std::string> parts;
  for (const auto& k : keys)
    if (plugin["params"] && plugin["params"][k]) parts.push_back(fmt::format("{} {}", k, plugin["params"][k].Scalar()));
  if (!parts.empty()) text += " (" + join(parts, ", ") + ")";
  return text;
}

}  // namespace

StageType report_stage() {
  return StageType{
      "report",
      "a report of this run (report.md, report.html): results table, sample grids, training and ROC curves, timings",
      {
          ParamSpec::String("title", "admis run report", "the report's title"),
          ParamSpec::StringList("labels", {}, "one row per method: its training-data label, e.g. \"ADMIS (ddpm-faces)\""),
          ParamSpec::StringList("evaluations", {}, "the evaluate stage of each row (same order as labels)"),
          ParamSpec::StringList("trainings", {}, "the train_recognition stage of each row (curves, backbone, head)"),
          ParamSpec::StringList("samples", {}, "the sample stage of each row (its preview grid); \"\" for none"),
          ParamSpec::StringList("generators", {}, "train_generator stages whose loss curves to show"),
          ParamSpec::Path("context_faces", "", "optional folder of context faces to show (e.g. <root>/images)"),
          ParamSpec::String("notes", "", "a paragraph added under the title (e.g. the scale of the run)"),
      },
      [](const Params& keys, StageContext& ctx) {
        const fs::path out(ctx.output_dir), run = out.parent_path(), figures = out / "figures";
        fs::create_directories(figures);
        const auto& labels = keys.get_strings("labels");
        const auto& evaluations = keys.get_strings("evaluations");
        const auto& trainings = keys.get_strings("trainings");
        const auto& samples = keys.get_strings("samples");
        if (labels.empty()) throw Error(ctx.stage_name, "give `labels` and `evaluations`: one row per method");
        auto check_length = [&](const std::vector<std::string>& list, const char* name) {
          if (!list.empty() && list.size() != labels.size())
            throw Error(ctx.stage_name, fmt::format("`{}` has {} entries but `labels` has {}: give one per row", name,
                                                    list.size(), labels.size()));
        };
        if (evaluations.size() != labels.size())
          throw Error(ctx.stage_name, fmt::format("`evaluations` has {} entries but `labels` has {}: give one evaluate "
                                                  "stage per row",
                                                  evaluations.size(), labels.size()));
        check_length(trainings, "trainings");
        check_length(samples, "samples");

        const fs::path resolved = run / "manifest.resolved.yaml";
        const YAML::Node manifest = YAML::LoadFile(resolved.string());
        std::vector<std::string> stage_order;
        std::map<std::string, YAML::Node> stage_of;
        for (std::size_t i = 0; i < manifest["stages"].size(); ++i) {
          const YAML::Node s = manifest["stages"][i];
          stage_order.push_back(s["name"].Scalar());
          stage_of[s["name"].Scalar()] = s;
        }
        auto require_stage = [&](const std::string& name, const char* what) {
          if (!stage_of.count(name))
            throw Error(ctx.stage_name, fmt::format("{} '{}' is not a stage of this manifest; stages are: {}", what, name,
                                                    join(stage_order, ", ")));
        };

        std::vector<Row> rows;
        std::vector<std::string> set_names;
        for (std::size_t i = 0; i < labels.size(); ++i) {
          Row r;
          r.label = labels[i];
          r.evaluation = evaluations[i];
          r.training = trainings.empty() ? "" : trainings[i];
          r.samples = samples.empty() ? "" : samples[i];
          require_stage(r.evaluation, "evaluation");
          const fs::path results = run / r.evaluation / "results.json";
          if (!fs::exists(results))
            throw Error(ctx.stage_name, fmt::format("{} is missing: stage '{}' has not run", results.string(), r.evaluation));
          r.results = nlohmann::json::parse(read_file(results));
          for (const auto& [set, value] : r.results["sets"].items())
            if (std::find(set_names.begin(), set_names.end(), set) == set_names.end()) set_names.push_back(set);
          if (!r.training.empty()) {
            require_stage(r.training, "training");
            const YAML::Node t = stage_of[r.training];
            r.backbone = describe_plugin(t["backbone"], {"num_layers", "depth", "embedding_size"});
            r.head = describe_plugin(t["head"], {});
            if (t["head"] && t["head"]["params"] && t["head"]["params"]["out_features"])
              r.identities = t["head"]["params"]["out_features"].Scalar();
          }
          if (!r.samples.empty()) require_stage(r.samples, "samples");
          rows.push_back(std::move(r));
        }

        // Figures.
        std::vector<std::pair<std::string, std::string>> figure_list;  // caption, file name in figures/
        {
          std::vector<PlotSeries> curves;
          for (const auto& r : rows) {
            if (r.training.empty()) continue;
            auto csv = read_csv_columns(run / r.training / "metrics.csv");
            curves.push_back({r.label, csv["global_step"], csv["loss"]});
          }
          if (!curves.empty()) {
            write_line_plot((figures / "recognition_loss.png").string(), curves,
                            {"Recognizer training loss (ArcFace)", "step", "loss", false, true});
            figure_list.push_back({"Recognizer training loss", "recognition_loss.png"});
          }
        }
        {
          std::vector<PlotSeries> curves;
          for (const auto& g : keys.get_strings("generators")) {
            require_stage(g, "generator");
            auto csv = read_csv_columns(run / g / "metrics.csv");
            curves.push_back({g, csv["step"], csv["loss"]});
          }
          if (!curves.empty()) {
            write_line_plot((figures / "generator_loss.png").string(), curves,
                            {"Diffusion model training loss (MSE on eps)", "step", "loss", false, true});
            figure_list.push_back({"Diffusion model training loss", "generator_loss.png"});
          }
        }
        for (const auto& set : set_names) {
          std::vector<PlotSeries> curves;
          for (const auto& r : rows) {
            const auto& s = r.results["sets"];
            if (!s.contains(set) || !s[set].contains("roc_fpr")) continue;
            curves.push_back({fmt::format("{} (AUC {:.3f})", r.label, s[set]["auc"].get<double>()),
                              s[set]["roc_fpr"].get<std::vector<double>>(), s[set]["roc_tpr"].get<std::vector<double>>()});
          }
          const std::string file = fmt::format("roc_{}.png", set);
          write_line_plot((figures / file).string(), curves,
                          {fmt::format("ROC on {}", set), "false accept rate", "true accept rate", true, false});
          figure_list.push_back({fmt::format("ROC curves on {}", set), file});
        }
        std::vector<std::pair<std::string, std::string>> grids;  // caption, source picture
        const std::string faces_dir = keys.get_path("context_faces");
        if (!faces_dir.empty() && fs::is_directory(faces_dir)) {
          std::vector<std::string> names;
          for (const auto& e : fs::directory_iterator(faces_dir))
            if (e.path().extension() == ".png" || e.path().extension() == ".jpg") names.push_back(e.path().string());
          std::sort(names.begin(), names.end());
          if (names.size() > 16) names.resize(16);
          if (!names.empty()) {
            std::vector<cv::Mat> tiles;  // one row of up to 16 faces
            for (const auto& n : names) {
              cv::Mat face = cv::imread(n, cv::IMREAD_COLOR), tile;
              if (face.empty()) continue;
              cv::resize(face, tile, cv::Size(96, 96), 0, 0, cv::INTER_AREA);
              tiles.push_back(tile);
            }
            if (!tiles.empty()) {
              cv::Mat row;
              cv::hconcat(tiles, row);
              std::vector<unsigned char> png;
              cv::imencode(".png", row, png);
              write_file_atomic((figures / "context_faces.png").string(), std::string(png.begin(), png.end()));
              grids.push_back({"Context faces drawn by ddpm-faces", (figures / "context_faces.png").string()});
            }
          }
        }
        for (const auto& r : rows) {
          if (r.samples.empty()) continue;
          const fs::path preview = run / r.samples / "preview.png";
          if (!fs::exists(preview)) continue;
          const std::string file = fmt::format("samples_{}.png", r.samples);
          fs::copy_file(preview, figures / file, fs::copy_options::overwrite_existing);
          grids.push_back({fmt::format("Samples: {} (one identity per row)", r.label), (figures / file).string()});
        }

        // Timings, from each stage's last run.
        std::vector<std::pair<std::string, double>> timings;
        double total = 0;
        for (const auto& name : stage_order) {
          const fs::path f = run / name / kStageTimeFile;
          if (!fs::exists(f)) continue;
          const double seconds = std::atof(read_file(f).c_str());
          timings.push_back({name, seconds});
          total += seconds;
        }

        // Markdown and HTML from the same content.
        std::string md = fmt::format("# {}\n\n", keys.get_string("title"));
        std::string html = fmt::format(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{0}</title><style>body{{font-family:sans-serif;"
            "max-width:60em;margin:2em auto}}table{{border-collapse:collapse}}td,th{{border:1px solid #bbb;padding:"
            "3px 8px;text-align:center}}img{{max-width:100%}}</style></head><body>\n<h1>{0}</h1>\n",
            html_escape(keys.get_string("title")));
        const std::string machine = machine_description(ctx.runtime.threads());
        const std::string notes = keys.get_string("notes");
        md += (notes.empty() ? "" : notes + "\n\n") + fmt::format("Machine: {}. Run folder: `{}`.\n\n", machine, run.string());
        html += (notes.empty() ? "" : "<p>" + html_escape(notes) + "</p>\n") +
                fmt::format("<p>Machine: {}. Run folder: <code>{}</code>.</p>\n", html_escape(machine),
                            html_escape(run.string()));

        md += "## Verification accuracy (%)\n\n| Backbone | Head | Dataset | Id |";
        html += "<h2>Verification accuracy (%)</h2>\n<table><tr><th>Backbone</th><th>Head</th><th>Dataset</th><th>Id</th>";
        for (const auto& set : set_names) md += " " + set + " |", html += "<th>" + html_escape(set) + "</th>";
        md += " Average |\n|" + std::string(":---:|") + ":---:|:---:|:---:|";
        for (std::size_t i = 0; i <= set_names.size(); ++i) md += ":---:|";
        md += "\n";
        html += "<th>Average</th></tr>\n";
        for (const auto& r : rows) {
          md += fmt::format("| {} | {} | {} | {} |", r.backbone, r.head, r.label, r.identities);
          html += fmt::format("<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td>", html_escape(r.backbone),
                              html_escape(r.head), html_escape(r.label), html_escape(r.identities));
          for (const auto& set : set_names) {
            const auto& s = r.results["sets"];
            const std::string cell = s.contains(set) ? fmt::format("{:.2f}", 100 * s[set]["accuracy"].get<double>()) : "-";
            md += " " + cell + " |";
            html += "<td>" + cell + "</td>";
          }
          const std::string average = fmt::format("{:.2f}", 100 * r.results["average_accuracy"].get<double>());
          md += " " + average + " |\n";
          html += "<td>" + average + "</td></tr>\n";
        }
        html += "</table>\n";
        md += "\nAccuracy: 10-fold protocol (threshold chosen on 9 folds, accuracy on the 10th), flip test-time "
              "augmentation. Chance is 50%.\n\n| Dataset | set | accuracy | TAR@FAR=1e-3 | AUC | pairs |\n|---|---|---|---|---|---|\n";
        html += "<p>Accuracy: 10-fold protocol (threshold chosen on 9 folds, accuracy on the 10th), flip test-time "
                "augmentation. Chance is 50%.</p>\n<table><tr><th>Dataset</th><th>set</th><th>accuracy</th>"
                "<th>TAR@FAR=1e-3</th><th>AUC</th><th>pairs</th></tr>\n";
        for (const auto& r : rows)
          for (const auto& [set, s] : r.results["sets"].items()) {
            const std::string accuracy = fmt::format("{:.2f} ± {:.2f}", 100 * s["accuracy"].get<double>(),
                                                     100 * s["std"].get<double>());
            const std::string tar = fmt::format("{:.2f}", 100 * s["tar_at_far_1e-3"].get<double>());
            const std::string auc = fmt::format("{:.4f}", s["auc"].get<double>());
            const std::string pairs = std::to_string(s["pairs"].get<std::int64_t>());
            md += fmt::format("| {} | {} | {} | {} | {} | {} |\n", r.label, set, accuracy, tar, auc, pairs);
            html += fmt::format("<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                                html_escape(r.label), html_escape(set), accuracy, tar, auc, pairs);
          }
        html += "</table>\n";

        auto add_figure = [&](const std::string& caption, const std::string& file) {
          md += fmt::format("### {}\n\n![{}](figures/{})\n\n", caption, caption, file);
          html += fmt::format("<h3>{0}</h3>\n<img src=\"figures/{1}\" alt=\"{0}\">\n", html_escape(caption), file);
        };
        md += "\n## Samples\n\n";
        html += "<h2>Samples</h2>\n";
        for (const auto& [caption, file] : grids) add_figure(caption, fs::path(file).filename().string());
        md += "## Curves\n\n";
        html += "<h2>Curves</h2>\n";
        for (const auto& [caption, file] : figure_list) add_figure(caption, file);

        md += "## Time per stage\n\n| stage | seconds | |\n|---|---:|---|\n";
        html += "<h2>Time per stage</h2>\n<table><tr><th>stage</th><th>seconds</th><th></th></tr>\n";
        for (const auto& [name, seconds] : timings) {
          md += fmt::format("| {} | {:.1f} | {} |\n", name, seconds, format_duration(seconds));
          html += fmt::format("<tr><td>{}</td><td>{:.1f}</td><td>{}</td></tr>\n", html_escape(name), seconds,
                              format_duration(seconds));
        }
        md += fmt::format("| total (before this report) | {:.1f} | {} |\n\n", total, format_duration(total));
        html += fmt::format("<tr><th>total (before this report)</th><th>{:.1f}</th><th>{}</th></tr>\n</table>\n", total,
                            format_duration(total));
        md += "Each stage's time is that of its last run (a stage kept from an earlier run shows the earlier time).\n";
        html += "<p>Each stage's time is that of its last run (a stage kept from an earlier run shows the earlier "
                "time).</p>\n</body></html>\n";

        write_file_atomic((out / "report.md").string(), md);
        write_file_atomic((out / "report.html").string(), html);
        // One picture of the whole: the title and each row's accuracy, the sample grids on the
        // left, the curves on the right.
        std::vector<std::string> header{keys.get_string("title")};
        for (const auto& r : rows)
          header.push_back(fmt::format("{}: {:.1f}% average verification accuracy", r.label,
                                       100 * r.results["average_accuracy"].get<double>()));
        std::vector<std::pair<std::string, std::string>> curves;
        for (const auto& [caption, file] : figure_list) curves.push_back({caption, (figures / file).string()});
        if (!grids.empty() || !curves.empty()) write_overview((out / "overview.png").string(), header, {grids, curves}, 540);
        std::cerr << fmt::format("[{}] {} rows -> {}", ctx.stage_name, rows.size(), (out / "report.md").string())
                  << std::endl;
        for (const auto& r : rows)
          std::cerr << fmt::format("  {:<40} average accuracy {:.2f}%", r.label,
                                   100 * r.results["average_accuracy"].get<double>())
                    << std::endl;
      }};
}

}  // namespace admis::host
