// The verification protocol: TFace recognition/test/utils.py evaluate() (10-fold accuracy
// with the threshold chosen on the training folds) and insightface's calculate_val (TAR at
// a target FAR). numpy's summation order is reproduced so that means, standard deviations
// and distances agree with the references bit for bit.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "admis/host/verification.h"

namespace admis::host {

std::vector<double> arange_thresholds(double stop, double step) {
  // numpy sizes arange as ceil((stop - start) / step) and fills value i as start + i * delta.
  const auto n = static_cast<std::int64_t>(std::ceil(stop / step));
  std::vector<double> out(static_cast<std::size_t>(std::max<std::int64_t>(n, 0)));
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<double>(i) * step;
  return out;
}

std::vector<std::pair<std::int64_t, std::int64_t>> kfold_test_ranges(std::int64_t n, int folds) {
  if (folds < 2) throw Error("verification", fmt::format("need at least 2 folds, got {}", folds));
  if (n < folds) throw Error("verification", fmt::format("{} pairs cannot be split into {} folds", n, folds));
  std::vector<std::pair<std::int64_t, std::int64_t>> ranges;
  std::int64_t begin = 0;
  for (int k = 0; k < folds; ++k) {
    const std::int64_t size = n / folds + (k < n % folds ? 1 : 0);
    ranges.emplace_back(begin, begin + size);
    begin += size;
  }
  return ranges;
}

// numpy's pairwise summation (numpy/core/src/umath/loops_utils.h), which np.sum uses for a
// contiguous run of doubles: 8 interleaved partial sums per block of up to 128 values.
double numpy_sum(const double* a, std::size_t n) {
  if (n < 8) {
    double res = 0.;
    for (std::size_t i = 0; i < n; ++i) res += a[i];
    return res;
  }
  if (n <= 128) {
    double r[8];
    for (int j = 0; j < 8; ++j) r[j] = a[j];
    std::size_t i = 8;
    for (; i < n - (n % 8); i += 8)
      for (int j = 0; j < 8; ++j) r[j] += a[i + j];
    double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) res += a[i];
    return res;
  }
  std::size_t n2 = n / 2;
  n2 -= n2 % 8;
  return numpy_sum(a, n2) + numpy_sum(a + n2, n - n2);
}

double numpy_mean(const std::vector<double>& v) {
  return numpy_sum(v.data(), v.size()) / static_cast<double>(v.size());
}

double numpy_std(const std::vector<double>& v) {
  const double mean = numpy_mean(v);
  std::vector<double> sq(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) sq[i] = (v[i] - mean) * (v[i] - mean);
  return std::sqrt(numpy_sum(sq.data(), sq.size()) / static_cast<double>(v.size()));
}

std::vector<double> pair_distances(const torch::Tensor& embeddings) {
  if (embeddings.dim() != 2 || embeddings.size(0) % 2 != 0)
    throw Error("verification", fmt::format("embeddings must be [2N, D], got [{}]", fmt::join(embeddings.sizes().vec(), ", ")));
  torch::Tensor e = embeddings.to(torch::kCPU, torch::kFloat64).contiguous();
  const std::int64_t pairs = e.size(0) / 2, d = e.size(1);
  const double* p = e.data_ptr<double>();
  std::vector<double> dist(static_cast<std::size_t>(pairs));
  std::vector<double> sq(static_cast<std::size_t>(d));
  for (std::int64_t i = 0; i < pairs; ++i) {
    const double* a = p + (2 * i) * d;
    const double* b = p + (2 * i + 1) * d;
    for (std::int64_t j = 0; j < d; ++j) sq[j] = (a[j] - b[j]) * (a[j] - b[j]);
    dist[i] = numpy_sum(sq.data(), sq.size());
  }
  return dist;
}

namespace {

struct Counts {
  std::int64_t tp = 0, fp = 0, tn = 0, fn = 0;
};

// Confusion counts of "same iff dist < threshold" over the pairs in `index`.
Counts count_at(double threshold, const std::vector<double>& dist, const std::vector<bool>& issame,
                const std::vector<std::int64_t>& index) {
  Counts c;
  for (std::int64_t i : index) {
    const bool predicted = dist[i] < threshold;
    if (predicted && issame[i]) ++c.tp;
    else if (predicted) ++c.fp;
    else if (issame[i]) ++c.fn;
    else ++c.tn;
  }
  return c;
}

double rate(std::int64_t num, std::int64_t den) { return den == 0 ? 0.0 : static_cast<double>(num) / static_cast<double>(den); }

struct FoldSplit {
  std::vector<std::int64_t> train, test;
};

std::vector<FoldSplit> fold_splits(std::int64_t n, int folds) {
  std::vector<FoldSplit> out;
  for (const auto& [begin, end] : kfold_test_ranges(n, folds)) {
    FoldSplit s;
    for (std::int64_t i = 0; i < n; ++i) (i >= begin && i < end ? s.test : s.train).push_back(i);
    out.push_back(std::move(s));
  }
  return out;
}

void check_inputs(const std::vector<double>& dist, const std::vector<bool>& issame) {
  if (dist.size() != issame.size())
    throw Error("verification", fmt::format("{} distances for {} pair labels", dist.size(), issame.size()));
}

}  // namespace

RocResult calculate_roc(const std::vector<double>& dist, const std::vector<bool>& issame, int folds) {
  check_inputs(dist, issame);
  RocResult r;
  r.thresholds = arange_thresholds(4.0, 0.01);
  const std::size_t nt = r.thresholds.size();
  std::vector<std::vector<double>> tprs(folds, std::vector<double>(nt)), fprs(folds, std::vector<double>(nt));
  const auto splits = fold_splits(static_cast<std::int64_t>(dist.size()), folds);
  for (int k = 0; k < folds; ++k) {
    const auto& s = splits[k];
    std::size_t best = 0;
    double best_accuracy = -1;
    for (std::size_t t = 0; t < nt; ++t) {
      const Counts c = count_at(r.thresholds[t], dist, issame, s.train);
      const double accuracy = static_cast<double>(c.tp + c.tn) / static_cast<double>(s.train.size());
      if (accuracy > best_accuracy) {  // first maximum, as np.argmax
        best_accuracy = accuracy;
        best = t;
      }
    }
    for (std::size_t t = 0; t < nt; ++t) {
      const Counts c = count_at(r.thresholds[t], dist, issame, s.test);
      tprs[k][t] = rate(c.tp, c.tp + c.fn);
      fprs[k][t] = rate(c.fp, c.fp + c.tn);
    }
    const Counts c = count_at(r.thresholds[best], dist, issame, s.test);
    r.fold_accuracy.push_back(static_cast<double>(c.tp + c.tn) / static_cast<double>(s.test.size()));
    r.best_thresholds.push_back(r.thresholds[best]);
  }
  // np.mean(tprs, 0): the folds are added one after another, then divided.
  r.tpr.assign(nt, 0.0);
  r.fpr.assign(nt, 0.0);
  for (std::size_t t = 0; t < nt; ++t) {
    for (int k = 0; k < folds; ++k) {
      r.tpr[t] += tprs[k][t];
      r.fpr[t] += fprs[k][t];
    }
    r.tpr[t] /= folds;
    r.fpr[t] /= folds;
  }
  r.accuracy = numpy_mean(r.fold_accuracy);
  r.std = numpy_std(r.fold_accuracy);
  return r;
}

// scipy interp1d(far, thresholds, kind='slinear')(far_target): a degree-1 B-spline with knots
// [x0, x0, ..., x_{n-1}, x_{n-1}] over the stably sorted FARs. It interpolates between the
// last FAR <= target and the next one; repeated FARs form empty knot intervals, which the
// spline's interval search steps over. At target == the largest FAR scipy lands on the last
// interval, which is empty when the largest FAR repeats: 0/0, a NaN threshold that accepts
// nothing. We reproduce that rather than invent a value.
double interpolate_far_threshold(const std::vector<double>& far, const std::vector<double>& thresholds, double target) {
  const std::size_t n = far.size();
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return far[a] < far[b]; });
  std::vector<double> x(n), y(n);
  for (std::size_t i = 0; i < n; ++i) {
    x[i] = far[order[i]];
    y[i] = thresholds[order[i]];
  }
  if (n < 2) throw Error("verification", "TAR@FAR needs at least two thresholds");
  // The interval [x[j], x[j+1]] scipy's find_interval picks: the first knot above the target
  // ends it; at or beyond the last knot it is the last interval.
  std::size_t hi = static_cast<std::size_t>(std::upper_bound(x.begin(), x.end(), target) - x.begin());
  hi = std::clamp<std::size_t>(hi, 1, n - 1);
  const std::size_t lo = hi - 1;
  const double w = 1.0 / (x[hi] - x[lo]);
  const double h0 = w * (x[hi] - target), h1 = w * (target - x[lo]);
  return 0.0 + y[lo] * h0 + y[hi] * h1;
}

ValResult calculate_val(const std::vector<double>& dist, const std::vector<bool>& issame, double far_target, int folds) {
  check_inputs(dist, issame);
  const std::vector<double> thresholds = arange_thresholds(4.0, 0.001);
  const auto splits = fold_splits(static_cast<std::int64_t>(dist.size()), folds);
  ValResult r;
  auto val_far = [&](double threshold, const std::vector<std::int64_t>& index, int fold, const char* part) {
    const Counts c = count_at(threshold, dist, issame, index);
    if (c.tp + c.fn == 0 || c.fp + c.tn == 0)
      throw Error("verification", fmt::format("fold {} ({} part) has no {} pairs; TAR@FAR needs both kinds", fold + 1,
                                              part, c.tp + c.fn == 0 ? "same-identity" : "different-identity"));
    return std::make_pair(rate(c.tp, c.tp + c.fn), rate(c.fp, c.fp + c.tn));
  };
  for (int k = 0; k < folds; ++k) {
    std::vector<double> far_train(thresholds.size());
    for (std::size_t t = 0; t < thresholds.size(); ++t) far_train[t] = val_far(thresholds[t], splits[k].train, k, "training").second;
    const double max_far = *std::max_element(far_train.begin(), far_train.end());
    const double threshold = max_far >= far_target ? interpolate_far_threshold(far_train, thresholds, far_target) : 0.0;
    const auto [val, far] = val_far(threshold, splits[k].test, k, "test");
    r.fold_threshold.push_back(threshold);
    r.fold_val.push_back(val);
    r.fold_far.push_back(far);
  }
  r.val = numpy_mean(r.fold_val);
  r.val_std = numpy_std(r.fold_val);
  r.far = numpy_mean(r.fold_far);
  return r;
}

double roc_auc(const std::vector<double>& fpr, const std::vector<double>& tpr) {
  // Trapezoids over the points in threshold order (FPR never decreases with the threshold),
  // as sklearn.metrics.auc(fpr, tpr).
  double area = 0;
  for (std::size_t i = 1; i < fpr.size(); ++i) area += (fpr[i] - fpr[i - 1]) * (tpr[i] + tpr[i - 1]) / 2;
  return area;
}

VerificationResult evaluate_verification(const std::string& name, const torch::Tensor& embeddings,
                                         const std::vector<bool>& issame) {
  const std::vector<double> dist = pair_distances(embeddings);
  VerificationResult r;
  r.name = name;
  r.pairs = static_cast<std::int64_t>(issame.size());
  try {
    r.roc = calculate_roc(dist, issame);
    r.val = calculate_val(dist, issame);
  } catch (const Error& e) {
    throw Error(name, e.what());
  }
  r.auc = roc_auc(r.roc.fpr, r.roc.tpr);
  return r;
}

}  // namespace admis::host
