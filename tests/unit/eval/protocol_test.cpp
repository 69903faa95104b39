// The verification protocol against TFace's evaluate() (10-fold parity fixture) and
// insightface's calculate_val on a case computed by hand.
#include <gtest/gtest.h>

#include <cmath>

#include "admis/host/verification.h"
#include "admis/host/weights.h"
#include "support/support.h"

using namespace admis;
using admis::test::error_of;
using ::testing::HasSubstr;

TEST(VerificationProtocol, ThresholdsAreNumpyArange) {
  const auto t = host::arange_thresholds(4.0, 0.01);
  ASSERT_EQ(t.size(), 400u);
  EXPECT_EQ(t[0], 0.0);
  // numpy fills value i as i * 0.01: np.arange(0, 4, 0.01)[35] == 0.35000000000000003
  EXPECT_EQ(t[35], 0.35000000000000003);
  EXPECT_NE(t[35], 0.35);
  EXPECT_EQ(t[399], 399 * 0.01);
  EXPECT_EQ(host::arange_thresholds(4.0, 0.001).size(), 4000u);
}

TEST(VerificationProtocol, KFoldSizesFollowSklearn) {
  const auto r = host::kfold_test_ranges(23, 10);
  ASSERT_EQ(r.size(), 10u);
  for (int k = 0; k < 10; ++k) EXPECT_EQ(r[k].second - r[k].first, k < 3 ? 3 : 2) << "fold " << k;
  EXPECT_EQ(r.front().first, 0);
  EXPECT_EQ(r.back().second, 23);
  EXPECT_THAT(error_of([] { host::kfold_test_ranges(5, 10); }), HasSubstr("5 pairs cannot be split into 10 folds"));
}

TEST(VerificationProtocol, NumpyMeanAndStd) {
  // numpy 1.24: np.mean(v) = 0.9349999999999999, np.std(v) = 0.04499999999999999 (ddof 0),
  // both one ulp off the exact 0.935 and 0.045 because of numpy's summation order.
  const std::vector<double> v = {0.9, 0.95, 1.0, 0.85, 0.9, 0.95, 0.9, 0.95, 1.0, 0.95};
  EXPECT_EQ(host::numpy_mean(v), 0.9349999999999999);
  EXPECT_EQ(host::numpy_std(v), 0.04499999999999999);
}

TEST(VerificationProtocol, TenFoldMatchesTFace) {
  const auto fx = host::read_weights(test::parity_file("verification_10fold.safetensors"));
  const torch::Tensor issame_t = fx.at("issame").to(torch::kBool);
  std::vector<bool> issame;
  for (std::int64_t i = 0; i < issame_t.size(0); ++i) issame.push_back(issame_t[i].item<bool>());
  ASSERT_EQ(fx.at("embeddings").sizes(), (std::vector<std::int64_t>{1200, 128}));
  const auto r = host::evaluate_verification("fixture", fx.at("embeddings"), issame);
  EXPECT_EQ(r.pairs, 600);

  const torch::Tensor acc = fx.at("fold_accuracy").to(torch::kFloat64);
  const torch::Tensor thr = fx.at("best_thresholds").to(torch::kFloat64);
  ASSERT_EQ(r.roc.fold_accuracy.size(), 10u);
  for (int k = 0; k < 10; ++k) {
    EXPECT_EQ(r.roc.fold_accuracy[k], acc[k].item<double>()) << "fold " << k;
    EXPECT_EQ(r.roc.best_thresholds[k], thr[k].item<double>()) << "fold " << k;
  }
  const torch::Tensor tpr = fx.at("tpr").to(torch::kFloat64), fpr = fx.at("fpr").to(torch::kFloat64);
  ASSERT_EQ(static_cast<std::int64_t>(r.roc.tpr.size()), tpr.size(0));
  EXPECT_TRUE(test::all_close(torch::tensor(r.roc.tpr, torch::kFloat64), tpr, 1e-9));
  EXPECT_TRUE(test::all_close(torch::tensor(r.roc.fpr, torch::kFloat64), fpr, 1e-9));
  EXPECT_EQ(r.roc.accuracy, 0.9366666666666668);
  EXPECT_EQ(r.roc.std, 0.037859388972001834);
  // The ROC of a 94 % verifier: well above chance, below perfect.
  EXPECT_GT(r.auc, 0.9);
  EXPECT_LT(r.auc, 1.0);
  // TAR@FAR=1e-3 is a rate; with 30 different pairs per fold the test-fold FAR is 0 or >= 1/30.
  EXPECT_GE(r.val.val, 0.0);
  EXPECT_LE(r.val.val, 1.0);
}

TEST(VerificationProtocol, SlinearInterpolationOfFar) {
  // scipy.interpolate.interp1d(far, thr, kind='slinear')(target): repeated FARs are skipped.
  const std::vector<double> far = {0, 0, 0.5, 0.5, 1}, thr = {0, 1, 2, 3, 4};
  EXPECT_DOUBLE_EQ(host::interpolate_far_threshold(far, thr, 0.25), 1.5);
  EXPECT_DOUBLE_EQ(host::interpolate_far_threshold(far, thr, 0.5), 3.0);
  EXPECT_DOUBLE_EQ(host::interpolate_far_threshold(far, thr, 0.75), 3.5);
  EXPECT_DOUBLE_EQ(host::interpolate_far_threshold(far, thr, 1.0), 4.0);
  // At the largest FAR, repeated, scipy's last knot interval is empty: NaN.
  EXPECT_TRUE(std::isnan(host::interpolate_far_threshold({0, 0.5, 1, 1}, {0, 1, 2, 3}, 1.0)));
}

TEST(VerificationProtocol, TarAtFarComputedByHand) {
  // 20 pairs, fold k = pairs 2k (same, distance s_k) and 2k+1 (different, distance d_k).
  // d_k = 2.0005 + 0.1 k. For fold k >= 1 the training FAR is 0 up to threshold 2.000 and
  // 1/9 at 2.001, so FAR 1e-3 interpolates to 2.000 + (1e-3 / (1/9)) * 0.001 = 2.000009.
  // For fold 0 the smallest training distance is d_1 = 2.1005: threshold 2.100009.
  // Same pairs just below the interpolated threshold are accepted, just above rejected:
  // s_0 = 2.100005, s_1..4 = 2.000005 (accepted), s_5..9 = 2.000015 (rejected).
  // TAR per fold = [1,1,1,1,1,0,0,0,0,0]: mean 0.5, std 0.5. FAR per fold: fold 0 accepts
  // its different pair (2.0005 < 2.100009), the others do not: mean 0.1.
  std::vector<double> dist;
  std::vector<bool> issame;
  for (int k = 0; k < 10; ++k) {
    dist.push_back(k == 0 ? 2.100005 : k <= 4 ? 2.000005 : 2.000015);
    issame.push_back(true);
    dist.push_back(2.0005 + 0.1 * k);
    issame.push_back(false);
  }
  const auto v = host::calculate_val(dist, issame, 1e-3, 10);
  ASSERT_EQ(v.fold_threshold.size(), 10u);
  EXPECT_NEAR(v.fold_threshold[0], 2.100009, 1e-12);
  for (int k = 1; k < 10; ++k) EXPECT_NEAR(v.fold_threshold[k], 2.000009, 1e-12) << "fold " << k;
  EXPECT_EQ(v.fold_val, (std::vector<double>{1, 1, 1, 1, 1, 0, 0, 0, 0, 0}));
  EXPECT_EQ(v.val, 0.5);
  EXPECT_EQ(v.val_std, 0.5);
  EXPECT_DOUBLE_EQ(v.far, 0.1);
}

TEST(VerificationProtocol, TarAtFarIsZeroThresholdWhenFarNeverReached) {
  // Every different pair at distance 4.5: no threshold below 4 accepts one, so insightface
  // uses threshold 0, which accepts nothing.
  std::vector<double> dist;
  std::vector<bool> issame;
  for (int k = 0; k < 10; ++k) {
    dist.push_back(0.5);
    issame.push_back(true);
    dist.push_back(4.5);
    issame.push_back(false);
  }
  const auto v = host::calculate_val(dist, issame, 1e-3, 10);
  for (double t : v.fold_threshold) EXPECT_EQ(t, 0.0);
  EXPECT_EQ(v.val, 0.0);
  EXPECT_EQ(v.far, 0.0);
}

TEST(VerificationProtocol, ErrorsSayWhatIsMissing) {
  std::vector<double> dist(20, 1.0);
  std::vector<bool> issame(20, true);
  EXPECT_THAT(error_of([&] { host::calculate_val(dist, issame, 1e-3, 10); }),
              HasSubstr("has no different-identity pairs"));
  EXPECT_THAT(error_of([&] { host::calculate_roc(dist, std::vector<bool>(19, true), 10); }),
              HasSubstr("20 distances for 19 pair labels"));
  EXPECT_THAT(error_of([] { host::pair_distances(torch::zeros({3, 4})); }), HasSubstr("embeddings must be [2N, D], got [3, 4]"));
}
