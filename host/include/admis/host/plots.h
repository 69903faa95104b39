#pragma once
// Small PNG charts drawn with OpenCV for run reports: training curves and ROC overlays,
// and grids of face pictures.

#include <string>
#include <vector>

namespace admis::host {

struct PlotSeries {
  std::string name;
  std::vector<double> x, y;
};

struct PlotOptions {
  std::string title, x_label, y_label;
  bool unit_square = false;  // both axes 0..1 with the chance diagonal (ROC curves)
  bool log_y = false;        // logarithmic y axis (losses)
};

// Writes a line chart of `series` (one colour each, with a legend) to `path` atomically.
void write_line_plot(const std::string& path, const std::vector<PlotSeries>& series, const PlotOptions& options);

// Stacks PNG/JPEG pictures vertically, each under its caption, scaled to `width` pixels,
// and writes the result to `path` atomically; missing pictures are skipped.
void write_captioned_stack(const std::string& path, const std::vector<std::pair<std::string, std::string>>& pictures,
                           int width);

}  // namespace admis::host
