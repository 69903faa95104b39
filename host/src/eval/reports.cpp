// Running the verification sets and reporting them: the console table, results JSON and
// Markdown, and the ROC pictures.
#include <boost/filesystem.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <chrono>

#include "admis/host/manifest.h"
#include "admis/host/text.h"
#include "admis/host/verification.h"

namespace fs = boost::filesystem;

namespace admis::host {

std::vector<std::string> find_verification_sets(const std::string& dir, const std::vector<std::string>& names) {
  boost::system::error_code ec;
  if (!fs::is_directory(dir, ec)) throw Error(dir, "no such folder (expected a folder of insightface .bin files)");
  std::vector<std::string> found;
  for (const auto& entry : fs::directory_iterator(dir))
    if (fs::is_regular_file(entry.path(), ec) && entry.path().extension() == ".bin") found.push_back(entry.path().string());
  std::sort(found.begin(), found.end());
  if (found.empty())
    throw Error(dir, "no .bin verification sets found (lfw.bin, cfp_fp.bin, agedb_30.bin, calfw.bin, cplfw.bin, ...)");
  if (names.empty()) return found;
  std::vector<std::string> available, chosen;
  for (const auto& f : found) available.push_back(fs::path(f).stem().string());
  for (const auto& name : names) {
    auto it = std::find(available.begin(), available.end(), name);
    if (it == available.end())
      throw Error(dir, fmt::format("no verification set '{}' ({}.bin){}; found: {}", name, name,
                                   did_you_mean(name, available), join(available, ", ")));
    chosen.push_back(found[static_cast<std::size_t>(it - available.begin())]);
  }
  return chosen;
}

namespace {

double average_accuracy(const std::vector<VerificationResult>& results) {
  std::vector<double> acc;
  for (const auto& r : results) acc.push_back(r.roc.accuracy);
  return acc.empty() ? 0.0 : numpy_mean(acc);
}

double mean_best_threshold(const VerificationResult& r) { return numpy_mean(r.roc.best_thresholds); }

}  // namespace

std::string results_table(const std::vector<VerificationResult>& results) {
  std::string out = fmt::format("{:<12} {:>20} {:>10} {:>20} {:>7} {:>7}\n", "set", "accuracy (%)", "threshold",
                                "TAR@FAR=1e-3 (%)", "AUC", "pairs");
  for (const auto& r : results)
    out += fmt::format("{:<12} {:>9.4f} +- {:>7.4f} {:>10.4f} {:>9.4f} +- {:>7.4f} {:>7.4f} {:>7}\n", r.name,
                       100 * r.roc.accuracy, 100 * r.roc.std, mean_best_threshold(r), 100 * r.val.val,
                       100 * r.val.val_std, r.auc, r.pairs);
  out += fmt::format("{:<12} {:>9.4f}\n", "average", 100 * average_accuracy(results));
  return out;
}

std::string results_markdown(const std::vector<VerificationResult>& results, const std::string& title) {
  std::string out = fmt::format("# {}\n\n", title);
  out += "| set | accuracy (%) | best threshold | TAR@FAR=1e-3 (%) | AUC | pairs |\n";
  out += "| --- | --- | --- | --- | --- | --- |\n";
  for (const auto& r : results)
    out += fmt::format("| {} | {:.4f} ± {:.4f} | {:.4f} | {:.4f} ± {:.4f} | {:.4f} | {} |\n", r.name,
                       100 * r.roc.accuracy, 100 * r.roc.std, mean_best_threshold(r), 100 * r.val.val,
                       100 * r.val.val_std, r.auc, r.pairs);
  out += fmt::format("| average | {:.4f} | | | | |\n\n", 100 * average_accuracy(results));
  out += "Accuracy: TFace 10-fold protocol (threshold chosen on 9 folds, accuracy on the 10th; mean ± std over folds). "
         "TAR@FAR=1e-3: insightface calculate_val (mean ± std over folds). Embeddings use flip test-time "
         "augmentation.\n";
  return out;
}

std::string results_json(const std::vector<VerificationResult>& results) {
  nlohmann::json sets = nlohmann::json::object();
  for (const auto& r : results) {
    auto number = [](double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); };
    nlohmann::json thresholds = nlohmann::json::array();
    for (double t : r.val.fold_threshold) thresholds.push_back(number(t));
    sets[r.name] = {{"accuracy", r.roc.accuracy},
                    {"std", r.roc.std},
                    {"best_threshold", mean_best_threshold(r)},
                    {"tar_at_far_1e-3", r.val.val},
                    {"tar_at_far_1e-3_std", r.val.val_std},
                    {"far", r.val.far},
                    {"auc", r.auc},
                    {"pairs", r.pairs},
                    {"fold_accuracy", r.roc.fold_accuracy},
                    {"fold_best_threshold", r.roc.best_thresholds},
                    {"fold_far_threshold", thresholds},
                    {"roc_fpr", r.roc.fpr},
                    {"roc_tpr", r.roc.tpr}};
  }
  nlohmann::json out = {{"sets", sets}, {"average_accuracy", average_accuracy(results)}};
  return out.dump(2) + "\n";
}

void write_roc_png(const VerificationResult& r, const std::string& path) {
  const int width = 640, height = 560, left = 80, right = 30, top = 60, bottom = 70;
  const int pw = width - left - right, ph = height - top - bottom;
  cv::Mat img(height, width, CV_8UC3, cv::Scalar(255, 255, 255));
  auto to_px = [&](double fpr, double tpr) {
    return cv::Point(left + static_cast<int>(std::lround(fpr * pw)), top + ph - static_cast<int>(std::lround(tpr * ph)));
  };
  const cv::Scalar black(0, 0, 0), grey(200, 200, 200), blue(180, 90, 20);
  const int font = cv::FONT_HERSHEY_SIMPLEX;
  for (int i = 0; i <= 5; ++i) {
    const double v = i / 5.0;
    cv::line(img, to_px(v, 0), to_px(v, 1), grey, 1);
    cv::line(img, to_px(0, v), to_px(1, v), grey, 1);
    const std::string label = fmt::format("{:.1f}", v);
    cv::putText(img, label, to_px(v, 0) + cv::Point(-12, 22), font, 0.45, black, 1, cv::LINE_AA);
    cv::putText(img, label, to_px(0, v) + cv::Point(-34, 5), font, 0.45, black, 1, cv::LINE_AA);
  }
  cv::line(img, to_px(0, 0), to_px(1, 1), grey, 1, cv::LINE_AA);  // chance
  cv::rectangle(img, to_px(0, 1), to_px(1, 0), black, 1);
  std::vector<cv::Point> curve;
  for (std::size_t i = 0; i < r.roc.fpr.size(); ++i) curve.push_back(to_px(r.roc.fpr[i], r.roc.tpr[i]));
  cv::polylines(img, curve, false, blue, 2, cv::LINE_AA);
  cv::putText(img, "FPR (false accept rate)", cv::Point(left + pw / 2 - 100, height - 20), font, 0.55, black, 1, cv::LINE_AA);
  cv::putText(img, "TPR", cv::Point(10, top + ph / 2), font, 0.55, black, 1, cv::LINE_AA);
  cv::putText(img, fmt::format("{} ROC  (AUC = {:.4f}, {} pairs)", r.name, r.auc, r.pairs), cv::Point(left, 35), font,
              0.6, black, 1, cv::LINE_AA);
  std::vector<unsigned char> png;
  if (!cv::imencode(".png", img, png)) throw Error(path, "OpenCV could not encode the ROC picture as PNG");
  write_file_atomic(path, std::string(png.begin(), png.end()));
}

std::vector<VerificationResult> evaluate_backbone(Backbone& backbone, const std::vector<std::string>& bin_files,
                                                  const EvaluationOptions& options, std::ostream& log) {
  std::vector<VerificationResult> results;
  for (std::size_t s = 0; s < bin_files.size(); ++s) {
    const auto start = std::chrono::steady_clock::now();
    VerificationSet set = read_verification_bin(bin_files[s]);
    log << fmt::format("[{}/{}] {}: {} pairs, {}x{} images", s + 1, bin_files.size(), set.name, set.pairs(),
                       set.images.size(2), set.images.size(1))
        << std::endl;
    if (set.images.size(1) != backbone.input_size() || set.images.size(2) != backbone.input_size())
      throw Error(set.path, fmt::format("images are {}x{} but the backbone expects {}x{}", set.images.size(2),
                                        set.images.size(1), backbone.input_size(), backbone.input_size()));
    std::int64_t next_report = 0;
    torch::Tensor embeddings = embed_with_flip(backbone, set.images, options.batch_size, [&](std::int64_t done, std::int64_t total) {
      if (done >= next_report || done == total) {
        log << fmt::format("  embedded {}/{} images", done, total) << std::endl;
        next_report = done + std::max<std::int64_t>(total / 10, 1);
      }
    });
    VerificationResult r = evaluate_verification(set.name, embeddings, set.issame);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    log << fmt::format("  {}: accuracy {:.4f} +- {:.4f} %, TAR@FAR=1e-3 {:.4f} % ({:.1f} s)", set.name,
                       100 * r.roc.accuracy, 100 * r.roc.std, 100 * r.val.val, seconds)
        << std::endl;
    if (!options.roc_dir.empty()) write_roc_png(r, (fs::path(options.roc_dir) / (set.name + "_roc.png")).string());
    results.push_back(std::move(r));
  }
  if (!options.json_path.empty()) write_file_atomic(options.json_path, results_json(results));
  if (!options.markdown_path.empty())
    write_file_atomic(options.markdown_path, results_markdown(results, options.title.empty() ? "Verification" : options.title));
  return results;
}

}  // namespace admis::host
