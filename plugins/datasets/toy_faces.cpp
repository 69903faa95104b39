// toy-faces: labelled face-like images rendered procedurally with OpenCV, so the whole
// method (generate, train, verify) runs on a laptop without downloading any data.
//
// An identity is a parameter vector drawn from (seed, global identity index): head shape,
// skin, hair colour and style, eyes, brows, nose, mouth, ears, beard, glasses, a mole.
// Image k of identity i varies the nuisances drawn from (seed, i, k): pose, expression,
// lighting, blur, noise, an occluder and the background, each scaled by a strength
// parameter (0 turns it off). Faces sit in the ArcFace 112x112 layout (eyes near
// (38, 52) and (74, 52), nose tip near (56, 72), mouth near y 92; insightface's
// arcface_dst), scaled to image_size, so recognition backbones see "aligned" faces.
//
// Every random number comes from a splitmix64 stream seeded for one identity or one
// image, so read() is deterministic, independent of read order, and shares no state
// between threads.

#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <vector>

#include "dataset_util.h"
#include "datasets.h"

namespace admis::datasets {
namespace {

constexpr const char* kName = "dataset-reader/toy-faces";

// splitmix64 (Steele, Lea and Flood): tiny, portable, identical on every platform.
struct Rng {
  std::uint64_t state;
  explicit Rng(std::uint64_t seed) : state(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  bool chance(double p) { return uniform() < p; }
  int below(int n) { return static_cast<int>(next() % static_cast<std::uint64_t>(n)); }
};

// One seed from several words: each word is folded in through a splitmix64 step.
std::uint64_t derive(std::initializer_list<std::uint64_t> words) {
  std::uint64_t h = 0x6A09E667F3BCC908ull;
  for (std::uint64_t w : words) h = Rng(h ^ (w * 0xD1B54A32D192ED03ull)).next();
  return h;
}

// Seed streams: one per identity, and one per nuisance group of an image, so turning one
// nuisance off leaves the others' draws unchanged.
enum Stream : std::uint64_t { kIdentity = 1, kPose, kExpression, kLighting, kBlur, kNoise, kOcclusion, kBackground };

using Colour = cv::Scalar;  // RGB order: the canvas is RGB throughout

Colour scaled(const Colour& c, double k) { return Colour(c[0] * k, c[1] * k, c[2] * k); }
Colour mixed(const Colour& a, const Colour& b, double t) {
  return Colour(a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t);
}
Colour jittered(Rng& r, const Colour& c, double amount) {
  return Colour(std::clamp(c[0] + r.uniform(-amount, amount), 0.0, 255.0),
                std::clamp(c[1] + r.uniform(-amount, amount), 0.0, 255.0),
                std::clamp(c[2] + r.uniform(-amount, amount), 0.0, 255.0));
}
Colour random_colour(Rng& r) { return Colour(r.uniform(0, 255), r.uniform(0, 255), r.uniform(0, 255)); }

// The identity: geometry in the 112x112 template frame.
struct Identity {
  double head_cx, head_cy, head_a, head_b, jaw;  // jaw: superellipse power of the lower half (2 = round)
  Colour skin, hair, iris, lips;
  int hair_style;  // 0 bald, 1 short, 2 side part, 3 long, 4 fringe
  double hairline, part_slope;
  bool ears;
  double ear_size;
  double eye_y, eye_dx, eye_w, eye_h, iris_r;
  double brow_angle, brow_thick, brow_len, brow_gap;
  Colour brow;
  double nose_y, nose_w;
  double mouth_y, mouth_w, mouth_curve, lip_thick;
  bool beard, moustache, glasses, glasses_round, mole;
  Colour glasses_colour;
  double mole_x, mole_y;
};

Identity make_identity(std::uint64_t seed, std::int64_t global_identity) {
  Rng r(derive({seed, static_cast<std::uint64_t>(global_identity), kIdentity}));
  Identity p;
  p.head_cx = 56 + r.uniform(-1.5, 1.5);
  p.head_cy = 60 + r.uniform(-2, 3);
  p.head_a = r.uniform(29, 38);
  p.head_b = r.uniform(40, 48);
  p.jaw = r.uniform(1.7, 3.2);
  // Skin tones along a light-to-dark ramp, with a little hue variation.
  p.skin = jittered(r, mixed(Colour(244, 212, 188), Colour(88, 56, 38), r.uniform()), 12);
  static const std::array<Colour, 9> hair = {Colour(22, 18, 18),   Colour(62, 40, 26),   Colour(112, 74, 44),
                                             Colour(196, 160, 96), Colour(232, 206, 140), Colour(156, 64, 30),
                                             Colour(160, 158, 156), Colour(232, 230, 224), Colour(70, 60, 140)};
  p.hair = jittered(r, hair[static_cast<std::size_t>(r.below(static_cast<int>(hair.size())))], 14);
  p.hair_style = r.below(5);
  p.hairline = p.hair_style == 4 ? r.uniform(34, 39) : r.uniform(21, 32);
  p.part_slope = p.hair_style == 2 ? r.uniform(-0.25, 0.25) : 0.0;
  p.ears = r.chance(0.8);
  p.ear_size = r.uniform(7, 11);
  p.eye_y = 51.6 + r.uniform(-2, 2);
  p.eye_dx = 17.6 + r.uniform(-2.8, 2.8);
  p.eye_w = r.uniform(4.8, 7.6);
  p.eye_h = p.eye_w * r.uniform(0.38, 0.62);
  static const std::array<Colour, 6> irises = {Colour(74, 44, 24),  Colour(40, 26, 18),  Colour(70, 120, 180),
                                               Colour(80, 130, 80), Colour(120, 130, 140), Colour(130, 100, 50)};
  p.iris = jittered(r, irises[static_cast<std::size_t>(r.below(static_cast<int>(irises.size())))], 10);
  p.iris_r = p.eye_h * r.uniform(0.75, 1.0);
  p.brow_angle = r.uniform(-0.3, 0.3);
  p.brow_thick = r.uniform(1.4, 4.0);
  p.brow_len = r.uniform(10, 16);
  p.brow_gap = r.uniform(6.5, 10.5);
  p.brow = mixed(p.hair, Colour(30, 24, 20), r.uniform(0.2, 0.6));
  p.nose_y = 71.7 + r.uniform(-3.5, 3.5);
  p.nose_w = r.uniform(4.5, 9.5);
  p.mouth_y = 92.3 + r.uniform(-3, 2.5);
  p.mouth_w = r.uniform(10, 17);
  p.mouth_curve = r.uniform(-2.5, 3.5);
  p.lip_thick = r.uniform(1.4, 3.6);
  p.lips = jittered(r, mixed(p.skin, Colour(170, 60, 70), r.uniform(0.3, 0.7)), 8);
  p.beard = r.chance(0.18);
  p.moustache = r.chance(0.18);
  p.glasses = r.chance(0.2);
  p.glasses_round = r.chance(0.5);
  p.glasses_colour = jittered(r, r.chance(0.5) ? Colour(30, 30, 30) : random_colour(r), 10);
  p.mole = r.chance(0.35);
  p.mole_x = r.uniform(-22, 22);
  p.mole_y = r.uniform(58, 92);
  return p;
}

// Strengths of the nuisances, each in [0, 1]; 0 turns that nuisance off.
struct Nuisances {
  double pose, lighting, expression, blur, noise, occlusion, background;
};

// Draws in template coordinates (112 px frame) on a canvas of any size, with sub-pixel
// precision (OpenCV's `shift`: coordinates in 1/16 px) and anti-aliasing.
class Painter {
 public:
  static constexpr int kShift = 4;
  Painter(cv::Mat& canvas, double pixels_per_unit) : img_(canvas), f_(pixels_per_unit) {}

  cv::Point point(double x, double y) const {
    return {static_cast<int>(std::lround(x * f_ * 16)), static_cast<int>(std::lround(y * f_ * 16))};
  }
  int thickness(double t) const { return std::max(1, static_cast<int>(std::lround(t * f_))); }

  void ellipse(double cx, double cy, double a, double b, const Colour& c, double angle = 0, int thick = -1,
               double start = 0, double end = 360) {
    const cv::Size axes(std::max(1, static_cast<int>(std::lround(a * f_ * 16))),
                        std::max(1, static_cast<int>(std::lround(b * f_ * 16))));
    cv::ellipse(img_, point(cx, cy), axes, angle, start, end, c, thick, cv::LINE_AA, kShift);
  }
  void fill(const std::vector<cv::Point2d>& pts, const Colour& c) {
    std::vector<cv::Point> q;
    q.reserve(pts.size());
    for (const auto& p : pts) q.push_back(point(p.x, p.y));
    const cv::Point* data = q.data();
    const int n = static_cast<int>(q.size());
    cv::fillPoly(img_, &data, &n, 1, c, cv::LINE_AA, kShift);
  }
  void polyline(const std::vector<cv::Point2d>& pts, const Colour& c, double thick, bool closed = false) {
    std::vector<cv::Point> q;
    q.reserve(pts.size());
    for (const auto& p : pts) q.push_back(point(p.x, p.y));
    const cv::Point* data = q.data();
    const int n = static_cast<int>(q.size());
    cv::polylines(img_, &data, &n, 1, closed, c, thickness(thick), cv::LINE_AA, kShift);
  }
  void line(double x0, double y0, double x1, double y1, const Colour& c, double thick) {
    cv::line(img_, point(x0, y0), point(x1, y1), c, thickness(thick), cv::LINE_AA, kShift);
  }

 private:
  cv::Mat& img_;
  double f_;
};

// The head outline: an ellipse on top, a superellipse of power `jaw` below (squarer jaws).
std::vector<cv::Point2d> head_outline(const Identity& p, double grow = 0) {
  std::vector<cv::Point2d> pts;
  constexpr int kPoints = 72;
  for (int i = 0; i < kPoints; ++i) {
    const double t = 2 * M_PI * i / kPoints;
    const double c = std::cos(t), s = std::sin(t);
    const double a = p.head_a + grow, b = p.head_b + grow;
    if (s <= 0) {
      pts.emplace_back(p.head_cx + a * c, p.head_cy + b * s);
    } else {
      const double e = 2.0 / p.jaw;
      pts.emplace_back(p.head_cx + a * std::copysign(std::pow(std::abs(c), e), c), p.head_cy + b * std::pow(s, e));
    }
  }
  return pts;
}

void draw_background(cv::Mat& img, Rng r, double strength) {
  const Colour neutral(150, 150, 150);
  const Colour c1 = mixed(neutral, random_colour(r), strength);
  const Colour c2 = mixed(c1, random_colour(r), 0.6 * strength);
  const double angle = r.uniform(0, 2 * M_PI);
  const double dx = std::cos(angle), dy = std::sin(angle);
  const int n = img.rows;
  if (strength > 0) {
    for (int y = 0; y < n; ++y) {
      auto* row = img.ptr<std::uint8_t>(y);
      for (int x = 0; x < n; ++x) {
        const double t = std::clamp(0.5 + (dx * (x - n / 2.0) + dy * (y - n / 2.0)) / n, 0.0, 1.0);
        for (int ch = 0; ch < 3; ++ch) row[3 * x + ch] = cv::saturate_cast<std::uint8_t>(c1[ch] + (c2[ch] - c1[ch]) * t);
      }
    }
  } else {
    img.setTo(c1);
  }
  // A few low-contrast shapes as texture.
  Painter paint(img, n / 112.0);
  const int shapes = static_cast<int>(std::lround(strength * 4));
  for (int i = 0; i < 4; ++i) {
    const double x = r.uniform(0, 112), y = r.uniform(0, 112), a = r.uniform(6, 30), b = r.uniform(6, 30);
    const Colour c = jittered(r, c1, 40);
    const bool round = r.chance(0.5);
    if (i >= shapes) continue;  // the draws above are made regardless, so streams stay aligned
    if (round)
      paint.ellipse(x, y, a, b, c, r.uniform(0, 180));
    else
      paint.fill({{x - a, y - b}, {x + a, y - b}, {x + a, y + b}, {x - a, y + b}}, c);
  }
  // Clothing: its colour changes from photo to photo like the background.
  const Colour shirt = mixed(Colour(70, 80, 110), random_colour(r), strength);
  paint.ellipse(56, 130, 54, 28, shirt);
}

// Draws the pose stream's first number (yaw); render() draws the rest from the same stream.
void draw_face(cv::Mat& img, const Identity& p, Rng expression_rng, Rng& pose_rng, const Nuisances& s) {
  Painter paint(img, img.rows / 112.0);
  // Expression: smile, open mouth, eye openness, raised brows, gaze.
  Rng& e = expression_rng;
  const double smile = s.expression * e.uniform(-2.5, 5);
  const double open_draw = e.uniform(), open_amount = e.uniform(1, 6);
  const double mouth_open = open_draw < 0.35 * s.expression ? s.expression * open_amount : 0.0;
  const double eye_open = 1 - s.expression * e.uniform(0, 0.65);
  const double brow_raise = s.expression * e.uniform(-1.5, 3);
  const double gaze = s.expression * e.uniform(-1.5, 1.5);
  // Yaw, faked by sliding the inner features sideways (the nose, nearer the camera, most).
  const double yaw = s.pose * pose_rng.uniform(-1, 1);
  const double fx = p.head_cx + 3.0 * yaw, nose_x = p.head_cx + 5.0 * yaw, mouth_x = p.head_cx + 3.5 * yaw;

  const Colour shade = scaled(p.skin, 0.82);
  // Neck, long hair behind the head, ears, head.
  paint.fill({{p.head_cx - 12, p.head_cy + 20}, {p.head_cx + 12, p.head_cy + 20}, {p.head_cx + 13, 118}, {p.head_cx - 13, 118}},
             shade);
  if (p.hair_style == 3) paint.ellipse(p.head_cx, p.head_cy + 10, p.head_a + 8, p.head_b + 10, p.hair);
  if (p.ears && p.hair_style != 3)
    for (int side : {-1, 1}) {
      const double x = p.head_cx + side * (p.head_a - 1.0 - 1.5 * side * yaw);
      paint.ellipse(x, p.eye_y + 7, p.ear_size * 0.5, p.ear_size, scaled(p.skin, 0.93));
      paint.ellipse(x + side * 0.8, p.eye_y + 7, p.ear_size * 0.22, p.ear_size * 0.6, shade);
    }
  paint.fill(head_outline(p), p.skin);

  // Beard: the head outline below a curve that rises towards the sideburns.
  if (p.beard) {
    auto pts = head_outline(p, 0.5);
    for (auto& q : pts) {
      const double u = (q.x - p.head_cx) / p.head_a;
      q.y = std::max(q.y, p.mouth_y - 9 - 20 * u * u);
    }
    paint.fill(pts, mixed(p.hair, p.skin, 0.15));
  }
  // Hair on top: an ellipse above the hairline (lower at the temples, tilted for a side part).
  if (p.hair_style != 0) {
    auto pts = head_outline(p, 3);
    for (auto& q : pts) {
      const double u = (q.x - p.head_cx) / p.head_a;
      const double temple = p.hair_style == 4 ? 6 : 16;
      q.y = std::min(q.y, p.hairline + temple * u * u + p.part_slope * (q.x - p.head_cx));
    }
    paint.fill(pts, p.hair);
  }

  // Brows, eyes (sclera, iris, pupil, lid), glasses.
  const Colour dark = scaled(p.skin, 0.45);
  for (int side : {-1, 1}) {
    const double cx = fx + side * p.eye_dx;
    const double by = p.eye_y - p.brow_gap - brow_raise;
    const double h = p.brow_len / 2, tilt = std::tan(p.brow_angle) * h;
    paint.polyline({{cx - side * h, by + tilt}, {cx, by - 1.2}, {cx + side * h, by - tilt + 1.0}}, p.brow, p.brow_thick);

    const double eh = p.eye_h * eye_open;
    if (eh < 1.2) {
      paint.line(cx - p.eye_w, p.eye_y, cx + p.eye_w, p.eye_y, dark, 1.2);
    } else {
      paint.ellipse(cx, p.eye_y, p.eye_w, eh, Colour(245, 245, 240));
      const double ir = std::min(p.iris_r, eh);
      paint.ellipse(cx + gaze, p.eye_y, ir, ir, p.iris);
      paint.ellipse(cx + gaze, p.eye_y, ir * 0.45, ir * 0.45, Colour(12, 10, 10));
      paint.ellipse(cx, p.eye_y, p.eye_w, eh, dark, 0, paint.thickness(1.0), 180, 360);
    }
    if (p.glasses) {
      const double gr = p.eye_w + 4.5;
      if (p.glasses_round)
        paint.ellipse(cx, p.eye_y + 1, gr, gr * 0.8, p.glasses_colour, 0, paint.thickness(1.3));
      else
        paint.polyline({{cx - gr, p.eye_y - gr * 0.7}, {cx + gr, p.eye_y - gr * 0.7}, {cx + gr, p.eye_y + gr * 0.8},
                        {cx - gr, p.eye_y + gr * 0.8}},
                       p.glasses_colour, 1.3, true);
      paint.line(cx + side * gr, p.eye_y - 1, p.head_cx + side * (p.head_a - 0.5), p.eye_y - 2, p.glasses_colour, 1.2);
    }
  }
  if (p.glasses) {
    const double gr = p.eye_w + 4.5;
    paint.line(fx - p.eye_dx + gr, p.eye_y - 1, fx + p.eye_dx - gr, p.eye_y - 1, p.glasses_colour, 1.3);
  }

  // Nose: bridge, tip, nostrils.
  paint.line((fx + nose_x) / 2, p.eye_y + 5, nose_x, p.nose_y - 1.5, shade, 1.2);
  paint.ellipse(nose_x, p.nose_y, p.nose_w / 2, 2.6, shade, 0, paint.thickness(1.1), 0, 180);
  for (int side : {-1, 1}) paint.ellipse(nose_x + side * p.nose_w * 0.3, p.nose_y + 0.8, 1.2, 0.8, dark);

  // Mouth: lips along a parabola; an open mouth shows a dark gap between them.
  const double curve = p.mouth_curve + smile;
  std::vector<cv::Point2d> upper, lower;
  constexpr int kLip = 13;
  for (int i = 0; i < kLip; ++i) {
    const double u = -1 + 2.0 * i / (kLip - 1), bow = 1 - u * u;
    const double x = mouth_x + u * p.mouth_w, y = p.mouth_y + curve * bow;
    upper.emplace_back(x, y - 0.5 * mouth_open * bow);
    lower.emplace_back(x, y + mouth_open * bow);
  }
  if (p.moustache) paint.ellipse(mouth_x, p.mouth_y - 5 + std::min(0.0, curve), p.mouth_w * 0.95, 2.6, p.hair);
  if (mouth_open > 0.5) {
    std::vector<cv::Point2d> gap(upper);
    gap.insert(gap.end(), lower.rbegin(), lower.rend());
    paint.fill(gap, Colour(70, 24, 30));
  }
  paint.polyline(upper, p.lips, p.lip_thick);
  paint.polyline(lower, p.lips, p.lip_thick * (mouth_open > 0.5 ? 1.0 : 0.8));
  paint.polyline(upper, scaled(p.lips, 0.55), 0.8);
  if (p.mole) paint.ellipse(fx + p.mole_x, p.mole_y, 1.1, 1.1, Colour(70, 45, 35));
}

class ToyFacesReader : public DatasetReader {
 public:
  explicit ToyFacesReader(const Params& p)
      : identities_(p.get_int("identities")),
        first_(p.get_int("first_identity")),
        per_identity_(p.get_int("images_per_identity")),
        size_(static_cast<int>(p.get_int("image_size"))),
        render_size_(static_cast<int>(p.get_int("render_size") > 0 ? p.get_int("render_size") : p.get_int("image_size"))),
        seed_(static_cast<std::uint64_t>(p.get_int("seed"))),
        s_{p.get_float("pose"),  p.get_float("lighting"),  p.get_float("expression"), p.get_float("blur"),
           p.get_float("noise"), p.get_float("occlusion"), p.get_float("background")} {
    if (render_size_ < 8)
      throw Error(kName, cat("render_size must be 0 (draw at image_size) or at least 8; got ", p.get_int("render_size")));
  }

  void open(const std::string& source) override {
    if (!source.empty())
      throw Error(kName, cat("toy-faces renders its images and reads no data; leave data_path empty (got '", source, "')"));
  }
  std::int64_t size() const override { return identities_ * per_identity_; }
  std::vector<std::string> class_names() const override {
    std::vector<std::string> names;
    names.reserve(static_cast<std::size_t>(identities_));
    for (std::int64_t i = 0; i < identities_; ++i) names.push_back(identity_name(first_ + i));
    return names;
  }

  Sample read(std::int64_t index) const override {
    if (index < 0 || index >= size()) throw Error(kName, cat("index ", index, " out of range [0, ", size(), ")"));
    const std::int64_t label = index / per_identity_, k = index % per_identity_;
    Sample out;
    out.image = render(first_ + label, k);
    out.label = label;
    out.label_name = identity_name(first_ + label);
    out.name = cat(k, ".png");
    return out;
  }

 private:
  static std::string identity_name(std::int64_t global) {
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "%05lld", static_cast<long long>(global));
    return buffer;
  }

  torch::Tensor render(std::int64_t identity, std::int64_t k) const {
    const int n = render_size_;
    auto stream = [&](Stream which) {
      return Rng(derive({seed_, static_cast<std::uint64_t>(identity), static_cast<std::uint64_t>(k), which}));
    };
    const Identity p = make_identity(seed_, identity);
    cv::Mat canvas(n, n, CV_8UC3);
    draw_background(canvas, stream(kBackground), s_.background);
    Rng pose = stream(kPose);
    draw_face(canvas, p, stream(kExpression), pose, s_);

    // Pose: rotation and scale about the face centre, then a shift; the border reflects
    // the background so no black corners appear.
    const double angle = s_.pose * pose.uniform(-12, 12), scale = 1 + s_.pose * pose.uniform(-0.08, 0.08);
    const double dx = s_.pose * pose.uniform(-5, 5), dy = s_.pose * pose.uniform(-5, 5);
    const double f = n / 112.0;
    if (s_.pose > 0) {
      cv::Mat m = cv::getRotationMatrix2D(cv::Point2f(static_cast<float>(56 * f), static_cast<float>(60 * f)), angle, scale);
      m.at<double>(0, 2) += dx * f;
      m.at<double>(1, 2) += dy * f;
      cv::Mat warped;
      cv::warpAffine(canvas, warped, m, canvas.size(), cv::INTER_LINEAR, cv::BORDER_REFLECT_101);
      canvas = warped;
    }

    // Occluder: a patch in front of the face (a hand, a sticker, a scarf) with some probability.
    Rng occ = stream(kOcclusion);
    const bool occluded = occ.chance(s_.occlusion);
    const int type = occ.below(3);
    const double ox = occ.uniform(30, 82), oy = occ.uniform(40, 100), ow = occ.uniform(8, 18), oh = occ.uniform(6, 14);
    const Colour oc = random_colour(occ);
    if (occluded) {
      Painter paint(canvas, f);
      if (type == 0)
        paint.fill({{ox - ow, oy - oh}, {ox + ow, oy - oh}, {ox + ow, oy + oh}, {ox - ow, oy + oh}}, oc);
      else if (type == 1)
        paint.ellipse(ox, oy, ow, oh, oc, occ.uniform(0, 180));
      else  // a band across the eyes, like sunglasses
        paint.fill({{16, 45}, {96, 45}, {96, 45 + oh}, {16, 45 + oh}}, scaled(oc, 0.3));
    }

    Rng blur = stream(kBlur);
    const double sigma = s_.blur * blur.uniform(0, 1.6) * f;
    if (sigma >= 0.25) cv::GaussianBlur(canvas, canvas, cv::Size(0, 0), sigma);

    // Lighting (a linear gradient of gain in a random direction, overall brightness and a
    // colour cast) and pixel noise, in one pass.
    Rng light = stream(kLighting);
    const double direction = light.uniform(0, 2 * M_PI), slope = s_.lighting * light.uniform(0, 0.6);
    const double brightness = 1 + s_.lighting * light.uniform(-0.25, 0.2);
    std::array<double, 3> cast{};
    for (auto& c : cast) c = 1 + s_.lighting * light.uniform(-0.08, 0.08);
    Rng noise = stream(kNoise);
    const double noise_sigma = s_.noise * noise.uniform(2, 14);
    // Triangular noise (sum of two uniforms) with standard deviation noise_sigma.
    const double noise_scale = noise_sigma * std::sqrt(6.0) / 65536.0;

    torch::Tensor out = torch::empty({n, n, 3}, torch::kUInt8);
    auto* dst = out.data_ptr<std::uint8_t>();
    const double gx = std::cos(direction) * slope / (n / 2.0), gy = std::sin(direction) * slope / (n / 2.0);
    const bool adjust = s_.lighting > 0 || noise_sigma > 0;
    std::uint64_t bits = 0;
    for (int y = 0; y < n; ++y) {
      const auto* row = canvas.ptr<std::uint8_t>(y);
      auto* o = dst + static_cast<std::size_t>(y) * n * 3;
      if (!adjust) {
        std::memcpy(o, row, static_cast<std::size_t>(n) * 3);
        continue;
      }
      for (int x = 0; x < n; ++x) {
        const double gain = brightness + gx * (x - n / 2.0) + gy * (y - n / 2.0);
        for (int ch = 0; ch < 3; ++ch) {
          double v = row[3 * x + ch] * gain * cast[static_cast<std::size_t>(ch)];
          if (noise_sigma > 0) {
            if ((x * 3 + ch) % 2 == 0) bits = noise.next();
            else bits >>= 32;
            const double a = static_cast<double>(bits & 0xFFFF), b = static_cast<double>((bits >> 16) & 0xFFFF);
            v += (a + b - 65535.0) * noise_scale;
          }
          o[3 * x + ch] = cv::saturate_cast<std::uint8_t>(v);
        }
      }
    }
    if (n == size_) return out;
    // A low-resolution world stored at the size the consumer expects (bilinear up, area down).
    cv::Mat small(n, n, CV_8UC3, out.data_ptr<std::uint8_t>()), resized;
    cv::resize(small, resized, cv::Size(size_, size_), 0, 0, size_ > n ? cv::INTER_LINEAR : cv::INTER_AREA);
    return torch::from_blob(resized.data, {size_, size_, 3}, torch::kUInt8).clone();
  }

  std::int64_t identities_, first_, per_identity_;
  int size_, render_size_;
  std::uint64_t seed_;
  Nuisances s_;
};

}  // namespace

void register_toy_faces(FactoryList& registry) {
  auto strength = [](const char* name, double def, const char* doc) { return ParamSpec::Float(name, def, doc).range(0, 1); };
  registry.add(
      Kind::DatasetReader, "toy-faces", "1.0.0",
      "Renders labelled face-like images procedurally (no data to download); leave the data path empty",
      {ParamSpec::Int("identities", 100, "number of identities (labels 0 .. identities-1)").range(1, 1e9),
       ParamSpec::Int("first_identity", 0,
                      "global index of the first identity; held-out sets use another range (e.g. 100000)")
           .range(0, 1e12),
       ParamSpec::Int("images_per_identity", 20, "images rendered per identity").range(1, 1e6),
       ParamSpec::Int("image_size", 112, "side of the square images (the ArcFace 112x112 layout, scaled)").range(16, 4096),
       ParamSpec::Int("render_size", 0,
                      "draw the faces at this side, then resize them to image_size (a low-resolution world, e.g. 16 "
                      "to match a small diffusion model's samples); 0: draw at image_size")
           .range(0, 4096),
       ParamSpec::Int("seed", 0, "draws the identities and the images; equal seeds give equal pixels").at_least(0),
       strength("pose", 0.5, "rotation (up to 12 degrees), scale (8%), shift (5 px) and yaw, as a strength in [0, 1]"),
       strength("lighting", 0.5, "lighting gradient, brightness and colour cast strength in [0, 1]"),
       strength("expression", 0.5, "smile, open mouth, eye openness, brow raise and gaze strength in [0, 1]"),
       strength("blur", 0.3, "Gaussian blur strength in [0, 1] (sigma up to 1.6 px at 112)"),
       strength("noise", 0.3, "pixel noise strength in [0, 1] (standard deviation up to 14 levels)"),
       strength("occlusion", 0.1, "probability of an occluding patch in front of the face"),
       strength("background", 0.5, "background and clothing colour and texture variation in [0, 1]")},
      [](const Params& p, Host&) -> std::unique_ptr<Plugin> { return std::make_unique<ToyFacesReader>(p); });
}

}  // namespace admis::datasets
