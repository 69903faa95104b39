#pragma once
// Placing a face generated in FFHQ's alignment into the ArcFace 112x112 layout that face
// recognition networks expect, without a landmark detector: one fixed similarity
// transform derived from the two alignment procedures (used by ddpm-faces' `ffhq`
// alignment; header-only so the tests can check the derivation).

#include <algorithm>
#include <array>
#include <cstdint>
#include <opencv2/core.hpp>

namespace admis::contexts {

// insightface's five-point ArcFace template for 112x112 crops (arcface_dst): left eye,
// right eye, nose tip, left and right mouth corners, in pixel-index coordinates.
inline constexpr std::array<std::array<double, 2>, 5> kArcFaceTemplate = {
    {{38.2946, 51.6963}, {73.5318, 51.5014}, {56.0252, 71.7366}, {41.5493, 92.3655}, {70.7299, 92.2041}}};

// The similarity transform from an FFHQ-aligned image of side `ffhq_size` to the ArcFace
// crop of side `face_size`, as a 2x3 matrix mapping crop pixels to FFHQ pixels.
//
// FFHQ's alignment (ffhq-dataset recreate_aligned_images, from dlib's 68 landmarks) takes
// the eye centres and mouth corners and builds an oriented square:
//   eye_to_eye = right eye - left eye,  eye_to_mouth = mouth centre - eye centre
//   x = eye_to_eye - rot90(eye_to_mouth), rescaled to max(2 |eye_to_eye|, 1.8 |eye_to_mouth|)
//   y = rot90(x),   c = eye centre + 0.1 eye_to_mouth
// and maps the square's corners c - x - y, c + x - y, c + x + y to the output image's
// corners. Applying that procedure to the ArcFace template's own landmarks places the
// template's 112x112 frame in the FFHQ image; inverting it gives the crop. For the
// template: |eye_to_eye| = 35.24 and |eye_to_mouth| = 40.69, so the mouth term sets the
// half side to 73.24 template pixels around c = (55.94, 55.67), and the square is rotated by
// 0.32 degrees. The 112 crop thus covers 112 / 146.47 = 76.5% of the FFHQ side: in a 256
// image its outer corners lie at about (29.4, 28.8) and (224.1, 225.6).
// Pixel centres: PIL's quad transform works on continuous coordinates (the FFHQ script
// adds 0.5 to pixel indices), so the half-pixel shifts cancel except for the final -0.5.
inline cv::Matx23d ffhq_to_arcface_crop(std::int64_t ffhq_size, std::int64_t face_size) {
  const double k = static_cast<double>(face_size) / 112.0;  // template scaled to the crop
  auto point = [&](int i) { return cv::Vec2d(kArcFaceTemplate[i][0] * k, kArcFaceTemplate[i][1] * k); };
  const cv::Vec2d eye_avg = (point(0) + point(1)) * 0.5, mouth_avg = (point(3) + point(4)) * 0.5;
  const cv::Vec2d eye_to_eye = point(1) - point(0), eye_to_mouth = mouth_avg - eye_avg;
  cv::Vec2d x = eye_to_eye - cv::Vec2d(-eye_to_mouth[1], eye_to_mouth[0]);
  x *= std::max(cv::norm(eye_to_eye) * 2.0, cv::norm(eye_to_mouth) * 1.8) / cv::norm(x);
  const cv::Vec2d y(-x[1], x[0]);
  const cv::Vec2d c = eye_avg + eye_to_mouth * 0.1;
  // FFHQ pixel u = S/2 - 0.5 + (S/2) [ (p - c).x / |x|^2, (p - c).y / |y|^2 ] for crop pixel p.
  const double half = static_cast<double>(ffhq_size) / 2.0, s = half / x.dot(x);
  const cv::Matx22d A(s * x[0], s * x[1], s * y[0], s * y[1]);
  const cv::Vec2d b = cv::Vec2d(half - 0.5, half - 0.5) - A * c;
  return cv::Matx23d(A(0, 0), A(0, 1), b[0], A(1, 0), A(1, 1), b[1]);
}

}  // namespace admis::contexts
