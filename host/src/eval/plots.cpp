// Line charts and picture stacks for reports (plots.h).
#include "admis/host/plots.h"

#include <fmt/format.h>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <limits>

#include "admis/host/manifest.h"

namespace admis::host {

namespace {

const std::vector<cv::Scalar> kColours = {{180, 90, 20}, {30, 120, 230}, {40, 160, 40},
                                          {40, 40, 200}, {150, 60, 150}, {20, 150, 150}};

void write_png(const cv::Mat& img, const std::string& path) {
  std::vector<unsigned char> png;
  if (!cv::imencode(".png", img, png)) throw Error(path, "OpenCV could not encode the picture as PNG");
  write_file_atomic(path, std::string(png.begin(), png.end()));
}

// Five round tick values covering [lo, hi].
std::vector<double> ticks(double lo, double hi) {
  const double span = hi - lo > 0 ? hi - lo : 1.0;
  const double raw = span / 5, magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  double step = magnitude;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (raw <= m * magnitude) {
      step = m * magnitude;
      break;
    }
  std::vector<double> out;
  for (double v = std::ceil(lo / step) * step; v <= hi + 1e-9 * span; v += step) out.push_back(v);
  return out;
}

std::string tick_text(double v) {
  if (v != 0 && (std::fabs(v) >= 1e5 || std::fabs(v) < 1e-3)) return fmt::format("{:.0e}", v);
  return fmt::format("{:g}", v);
}

}  // namespace

void write_line_plot(const std::string& path, const std::vector<PlotSeries>& series, const PlotOptions& o) {
  const int width = 720, height = 480, left = 80, right = 30, top = 50, bottom = 60;
  const int pw = width - left - right, ph = height - top - bottom;
  auto transform_y = [&](double y) { return o.log_y ? std::log10(std::max(y, 1e-12)) : y; };
  double x0 = std::numeric_limits<double>::infinity(), x1 = -x0, y0 = x0, y1 = -x0;
  for (const auto& s : series)
    for (std::size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      x0 = std::min(x0, s.x[i]), x1 = std::max(x1, s.x[i]);
      y0 = std::min(y0, transform_y(s.y[i])), y1 = std::max(y1, transform_y(s.y[i]));
    }
  if (o.unit_square) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  if (!std::isfinite(x0)) x0 = 0, x1 = 1, y0 = 0, y1 = 1;  // nothing to draw: empty axes
  if (x1 <= x0) x1 = x0 + 1;
  if (y1 <= y0) y1 = y0 + 1;
  const double y_pad = o.unit_square ? 0 : 0.05 * (y1 - y0);
  y0 -= y_pad, y1 += y_pad;

  cv::Mat img(height, width, CV_8UC3, cv::Scalar(255, 255, 255));
  auto to_px = [&](double x, double y) {
    return cv::Point(left + static_cast<int>(std::lround((x - x0) / (x1 - x0) * pw)),
                     top + ph - static_cast<int>(std::lround((y - y0) / (y1 - y0) * ph)));
  };
  const cv::Scalar black(0, 0, 0), grey(215, 215, 215);
  const int font = cv::FONT_HERSHEY_SIMPLEX;
  for (double v : ticks(x0, x1)) {
    cv::line(img, to_px(v, y0), to_px(v, y1), grey, 1);
    cv::putText(img, tick_text(v), to_px(v, y0) + cv::Point(-14, 20), font, 0.42, black, 1, cv::LINE_AA);
  }
  for (double v : ticks(y0, y1)) {
    cv::line(img, to_px(x0, v), to_px(x1, v), grey, 1);
    const std::string label = tick_text(o.log_y ? std::pow(10.0, v) : v);
    cv::putText(img, label, to_px(x0, v) + cv::Point(-8 - 9 * static_cast<int>(label.size()), 5), font, 0.42, black, 1,
                cv::LINE_AA);
  }
  if (o.unit_square) cv::line(img, to_px(0, 0), to_px(1, 1), grey, 1, cv::LINE_AA);
  cv::rectangle(img, to_px(x0, y1), to_px(x1, y0), black, 1);
  for (std::size_t k = 0; k < series.size(); ++k) {
    const auto& s = series[k];
    std::vector<cv::Point> points;
    for (std::size_t i = 0; i < s.x.size() && i < s.y.size(); ++i)
      if (std::isfinite(s.x[i]) && std::isfinite(s.y[i])) points.push_back(to_px(s.x[i], transform_y(s.y[i])));
    const cv::Scalar colour = kColours[k % kColours.size()];
    if (points.size() == 1) cv::circle(img, points[0], 3, colour, -1, cv::LINE_AA);
    if (points.size() > 1) cv::polylines(img, points, false, colour, 2, cv::LINE_AA);
    const cv::Point at(left + pw - 250, top + 20 + 20 * static_cast<int>(k));
    cv::line(img, at + cv::Point(0, -4), at + cv::Point(24, -4), colour, 3, cv::LINE_AA);
    cv::putText(img, s.name, at + cv::Point(30, 0), font, 0.45, black, 1, cv::LINE_AA);
  }
  cv::putText(img, o.title, cv::Point(left, 30), font, 0.6, black, 1, cv::LINE_AA);
  cv::putText(img, o.x_label, cv::Point(left + pw / 2 - 5 * static_cast<int>(o.x_label.size()), height - 15), font,
              0.5, black, 1, cv::LINE_AA);
  cv::putText(img, o.y_label + (o.log_y ? " (log)" : ""), cv::Point(8, top - 12), font, 0.5, black, 1, cv::LINE_AA);
  write_png(img, path);
}

void write_captioned_stack(const std::string& path, const std::vector<std::pair<std::string, std::string>>& pictures,
                           int width) {
  std::vector<cv::Mat> parts;
  for (const auto& [caption, file] : pictures) {
    const cv::Mat picture = cv::imread(file, cv::IMREAD_COLOR);
    if (picture.empty()) continue;
    cv::Mat scaled;
    const int height = std::max(1, static_cast<int>(std::lround(picture.rows * static_cast<double>(width) / picture.cols)));
    cv::resize(picture, scaled, cv::Size(width, height), 0, 0, picture.cols > width ? cv::INTER_AREA : cv::INTER_NEAREST);
    cv::Mat label(32, width, CV_8UC3, cv::Scalar(255, 255, 255));
    cv::putText(label, caption, cv::Point(8, 22), cv::FONT_HERSHEY_SIMPLEX, 0.6, cv::Scalar(0, 0, 0), 1, cv::LINE_AA);
    parts.push_back(label);
    parts.push_back(scaled);
  }
  if (parts.empty()) throw Error(path, "none of the pictures to combine could be read");
  cv::Mat stacked;
  cv::vconcat(parts, stacked);
  write_png(stacked, path);
}

}  // namespace admis::host
