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

// One picture of a run: `header` lines (the first as a title) over columns of pictures, each
// picture under its caption and scaled to `column_width`; written to `path` atomically.
// Pictures that cannot be read are skipped.
void write_overview(const std::string& path, const std::vector<std::string>& header,
                    const std::vector<std::vector<std::pair<std::string, std::string>>>& columns, int column_width);

}  // namespace admis::host
