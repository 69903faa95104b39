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
  return fmt::format("{:.3g}", v);  // log-axis ticks fall between round numbers
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
  }
  // The legend on a white box sized to its longest name: top right, or bottom right for ROC
  // curves, which run along the top.
  int legend_width = 0;
  for (const auto& s : series) {
    int baseline = 0;
    legend_width = std::max(legend_width, cv::getTextSize(s.name, font, 0.45, 1, &baseline).width);
  }
  legend_width += 44;
  const int legend_height = 20 * static_cast<int>(series.size()) + 8;
  const cv::Point corner(left + pw - legend_width - 6, o.unit_square ? top + ph - legend_height - 6 : top + 6);
  if (!series.empty()) {
    cv::rectangle(img, corner, corner + cv::Point(legend_width, legend_height), cv::Scalar(255, 255, 255), cv::FILLED);
    cv::rectangle(img, corner, corner + cv::Point(legend_width, legend_height), grey, 1);
  }
  for (std::size_t k = 0; k < series.size(); ++k) {
    const cv::Point at = corner + cv::Point(8, 18 + 20 * static_cast<int>(k));
    cv::line(img, at + cv::Point(0, -4), at + cv::Point(24, -4), kColours[k % kColours.size()], 3, cv::LINE_AA);
    cv::putText(img, series[k].name, at + cv::Point(30, 0), font, 0.45, black, 1, cv::LINE_AA);
  }
  cv::putText(img, o.title, cv::Point(left, 22), font, 0.6, black, 1, cv::LINE_AA);
  cv::putText(img, o.x_label, cv::Point(left + pw / 2 - 5 * static_cast<int>(o.x_label.size()), height - 15), font,
              0.5, black, 1, cv::LINE_AA);
  cv::putText(img, o.y_label + (o.log_y ? " (log)" : ""), cv::Point(8, top - 6), font, 0.5, black, 1, cv::LINE_AA);
  write_png(img, path);
}

namespace {

// The pictures one under the other, each under its caption, scaled to `width`.
cv::Mat captioned_column(const std::vector<std::pair<std::string, std::string>>& pictures, int width) {
  std::vector<cv::Mat> parts;
  for (const auto& [caption, file] : pictures) {
    const cv::Mat picture = cv::imread(file, cv::IMREAD_COLOR);
    if (picture.empty()) continue;
    cv::Mat scaled;
    const int height = std::max(1, static_cast<int>(std::lround(picture.rows * static_cast<double>(width) / picture.cols)));
    cv::resize(picture, scaled, cv::Size(width, height), 0, 0, picture.cols > width ? cv::INTER_AREA : cv::INTER_NEAREST);
    // The caption's font shrinks until it fits the column.
    double scale = 0.55;
    int baseline = 0;
    while (scale > 0.3 && cv::getTextSize(caption, cv::FONT_HERSHEY_SIMPLEX, scale, 1, &baseline).width > width - 16)
      scale -= 0.05;
    cv::Mat label(32, width, CV_8UC3, cv::Scalar(255, 255, 255));
    cv::putText(label, caption, cv::Point(8, 22), cv::FONT_HERSHEY_SIMPLEX, scale, cv::Scalar(0, 0, 0), 1, cv::LINE_AA);
    parts.push_back(label);
    parts.push_back(scaled);
  }
  cv::Mat column;
  if (!parts.empty()) cv::vconcat(parts, column);
  return column;
}

}  // namespace

void write_overview(const std::string& path, const std::vector<std::string>& header,
                    const std::vector<std::vector<std::pair<std::string, std::string>>>& columns, int column_width) {
  std::vector<cv::Mat> built;
  int height = 0;
  for (const auto& pictures : columns) {
    cv::Mat column = captioned_column(pictures, column_width);
    if (column.empty()) continue;
    height = std::max(height, column.rows);
    built.push_back(column);
  }
  if (built.empty()) throw Error(path, "none of the pictures to combine could be read");
  for (auto& column : built)  // pad the shorter columns with white
    if (column.rows < height)
      cv::copyMakeBorder(column, column, 0, height - column.rows, 0, 0, cv::BORDER_CONSTANT, cv::Scalar(255, 255, 255));
  cv::Mat body;
  cv::hconcat(built, body);
  const int line_height = 28;
  cv::Mat top(line_height * static_cast<int>(header.size()) + (header.empty() ? 0 : 12), body.cols, CV_8UC3,
              cv::Scalar(255, 255, 255));
  for (std::size_t k = 0; k < header.size(); ++k)
    cv::putText(top, header[k], cv::Point(8, 24 + line_height * static_cast<int>(k)), cv::FONT_HERSHEY_SIMPLEX,
                k == 0 ? 0.75 : 0.6, cv::Scalar(0, 0, 0), k == 0 ? 2 : 1, cv::LINE_AA);
  cv::Mat whole;
  if (top.rows > 0) cv::vconcat(std::vector<cv::Mat>{top, body}, whole);
  else whole = body;
  write_png(whole, path);
}

}  // namespace admis::host
