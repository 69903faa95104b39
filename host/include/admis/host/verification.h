#pragma once
// Face-verification evaluation on the insightface pair sets (lfw.bin, cfp_fp.bin,
// agedb_30.bin, calfw.bin, cplfw.bin, ...): read a .bin, embed its images with a backbone
// and flip test-time augmentation, and score the pairs with TFace's 10-fold protocol
// (recognition/test/utils.py evaluate()) plus insightface's TAR at FAR = 1e-3
// (recognition/arcface_torch/eval/verification.py calculate_val).

#include <torch/torch.h>

#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "admis/host/commands.h"
#include "admis/sdk.h"

namespace admis::host {

// One pair set: images 2i and 2i+1 form pair i.
struct VerificationSet {
  std::string name;             // file name without .bin
  std::string path;
  torch::Tensor images;         // [2N,H,W,3] uint8, RGB
  std::vector<bool> issame;     // [N]
  std::int64_t pairs() const { return static_cast<std::int64_t>(issame.size()); }
};

// Reads an insightface .bin: a pickle (Python 2 protocol 2 or Python 3) of
// (list of 2N encoded images, list of N bools). Images are decoded with OpenCV and
// converted BGR -> RGB. Errors name the file and, for an image, its index.
VerificationSet read_verification_bin(const std::string& path);

// Writes an insightface .bin as insightface's packing scripts do (`pickle.dump((bins,
// issame_list), f, protocol=pickle.HIGHEST_PROTOCOL)`): a protocol-4 pickle of (list of 2N
// bytes, list of N bools) that Python's pickle.load(f, encoding='bytes') and
// read_verification_bin read. Images 2i and 2i+1 form pair i; each is an encoded file (PNG
// or JPEG bytes, BGR as OpenCV writes them). Written atomically (temporary file, rename).
void write_verification_bin(const std::string& path, const std::vector<std::string>& encoded_images,
                            const std::vector<bool>& issame);

// numpy.arange(0, stop, step) exactly as numpy fills it: value i is i * step.
std::vector<double> arange_thresholds(double stop, double step);

// sklearn KFold(n_splits, shuffle=False): contiguous test folds, the first n % k folds one
// longer. Returns [begin, end) of each test fold.
std::vector<std::pair<std::int64_t, std::int64_t>> kfold_test_ranges(std::int64_t n, int folds);

// Squared L2 distance between rows 2i and 2i+1 (in double, as the references do on
// their float64 embedding arrays).
std::vector<double> pair_distances(const torch::Tensor& embeddings);

// numpy's sum (pairwise summation), mean and std (ddof 0) of doubles, bit for bit.
double numpy_sum(const double* values, std::size_t n);
double numpy_mean(const std::vector<double>& values);
double numpy_std(const std::vector<double>& values);

// TFace calculate_roc with thresholds arange(0, 4, 0.01).
struct RocResult {
  std::vector<double> thresholds;       // [T]
  std::vector<double> tpr, fpr;         // [T], per-fold rates averaged over folds
  std::vector<double> fold_accuracy;    // [folds], at the fold's best threshold
  std::vector<double> best_thresholds;  // [folds], first argmax of training accuracy
  double accuracy = 0, std = 0;         // numpy mean and std of fold_accuracy
};
RocResult calculate_roc(const std::vector<double>& distances, const std::vector<bool>& issame, int folds = 10);

// insightface calculate_val: per fold, the threshold where the training FAR reaches
// `far_target` (scipy interp1d(far_train, thresholds, kind='slinear'), thresholds
// arange(0, 4, 0.001); 0 when the training FAR never reaches the target), then
// TAR (= VAL) and FAR on the test fold at that threshold.
struct ValResult {
  std::vector<double> fold_threshold, fold_val, fold_far;
  double val = 0, val_std = 0, far = 0;  // mean of val, std of val, mean of far
};
ValResult calculate_val(const std::vector<double>& distances, const std::vector<bool>& issame, double far_target = 1e-3,
                        int folds = 10);
// The slinear interpolation alone: far values non-decreasing along thresholds.
double interpolate_far_threshold(const std::vector<double>& far, const std::vector<double>& thresholds, double far_target);

// Area under the ROC curve (trapezoids over the fpr-sorted points, with (0,0) and (1,1)).
double roc_auc(const std::vector<double>& fpr, const std::vector<double>& tpr);

struct VerificationResult {
  std::string name;
  std::int64_t pairs = 0;
  RocResult roc;
  ValResult val;
  double auc = 0;
};
VerificationResult evaluate_verification(const std::string& name, const torch::Tensor& embeddings,
                                         const std::vector<bool>& issame);

// Embeds [N,H,W,3] uint8 RGB images: x = (x/255 - 0.5)/0.5 as [N,3,H,W], embedding
// f(x) + f(flip_W(x)), L2-normalised; batches of `batch_size`, eval mode, InferenceMode.
// `progress(done, total)` is called after each batch. Returns [N,D] float64 on the CPU
// (normalised in float64, as insightface's sklearn normalize on its float64 array).
torch::Tensor embed_with_flip(Backbone& backbone, const torch::Tensor& images, std::int64_t batch_size,
                              const std::function<void(std::int64_t, std::int64_t)>& progress = {});

// The .bin files in `dir`, sorted by name; with `names`, exactly those sets (an error
// names the missing one). An error names `dir` when it holds none.
std::vector<std::string> find_verification_sets(const std::string& dir, const std::vector<std::string>& names = {});

// Reports. The table has one row per set plus the average accuracy.
std::string results_table(const std::vector<VerificationResult>& results);
std::string results_markdown(const std::vector<VerificationResult>& results, const std::string& title);
std::string results_json(const std::vector<VerificationResult>& results);
// The ROC curve (the averaged per-threshold FPR/TPR, linear axes as TFace's gen_plot) with
// the AUC in the title, as a PNG drawn with OpenCV, written atomically.
void write_roc_png(const VerificationResult& result, const std::string& path);

// Evaluates `backbone` on every set, writing the JSON (if `json_path`), the Markdown table
// (if `markdown_path`) and <roc_dir>/<set>_roc.png (if `roc_dir`), printing progress to `log`.
struct EvaluationOptions {
  std::int64_t batch_size = 64;
  std::string json_path;
  std::string roc_dir;
  std::string markdown_path;
  std::string title;
};
std::vector<VerificationResult> evaluate_backbone(Backbone& backbone, const std::vector<std::string>& bin_files,
                                                  const EvaluationOptions& options, std::ostream& log);

// `admis eval --backbone NAME [--set k=v ...] --weights W --data DIR [--json F] [--roc-dir D] [--batch-size B]`
int cmd_eval(const std::vector<std::string>& args, Globals& g);

}  // namespace admis::host
