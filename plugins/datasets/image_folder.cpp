// <root>/<identity>/<file>: identities are the sorted folder names (torchvision
// ImageFolder), files within an identity are read in sorted order.

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <system_error>

#include "dataset_util.h"
#include "datasets.h"

namespace admis::datasets {
namespace {

namespace fs = std::filesystem;

bool is_image_name(const fs::path& p) {
  if (p.filename().string().rfind('.', 0) == 0) return false;  // hidden files
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext == ".jpg" || ext == ".jpeg" || ext == ".png" || ext == ".bmp";
}

class ImageFolderReader : public DatasetReader {
 public:
  void open(const std::string& source) override {
    if (source.empty())
      throw Error("dataset-reader/image-folder",
                  "no data path given: set data_path to the dataset's root folder (<root>/<identity>/<file>)");
    root_ = source;
    std::error_code ec;
    if (!fs::is_directory(source, ec)) throw Error(source, "image-folder: not a folder (expected <root>/<identity>/<file>)");
    for (const auto& entry : fs::directory_iterator(source))
      if (entry.is_directory() && entry.path().filename().string().rfind('.', 0) != 0)
        classes_.push_back(entry.path().filename().string());
    std::sort(classes_.begin(), classes_.end());
    if (classes_.empty()) throw Error(source, "image-folder: no identity folders inside");
    for (std::size_t label = 0; label < classes_.size(); ++label) {
      std::vector<std::string> names;
      for (const auto& entry : fs::directory_iterator(fs::path(source) / classes_[label]))
        if (entry.is_regular_file() && is_image_name(entry.path())) names.push_back(entry.path().filename().string());
      std::sort(names.begin(), names.end());
      for (auto& n : names) files_.push_back({static_cast<std::int64_t>(label), std::move(n)});
    }
  }
  std::int64_t size() const override { return static_cast<std::int64_t>(files_.size()); }
  std::vector<std::string> class_names() const override { return classes_; }
  Sample read(std::int64_t index) const override {
    if (index < 0 || index >= size())
      throw Error(root_, cat("image-folder: index ", index, " out of range [0, ", size(), ")"));
    const auto& [label, name] = files_[static_cast<std::size_t>(index)];
    const std::string path = (fs::path(root_) / classes_[static_cast<std::size_t>(label)] / name).string();
    Sample s;
    s.encoded = read_whole_file(path);
    s.image = decode_image(s.encoded, path);
    s.label = label;
    s.label_name = classes_[static_cast<std::size_t>(label)];
    s.name = name;
    return s;
  }

 private:
  std::string root_;
  std::vector<std::string> classes_;
  std::vector<std::pair<std::int64_t, std::string>> files_;
};

bool is_non_empty_dir(const fs::path& p) {
  std::error_code ec;
  return fs::exists(p, ec) && (!fs::is_directory(p, ec) || !fs::is_empty(p, ec));
}

// A single path component: no separators, not "." or "..".
void check_component(const std::string& part, const char* what, const std::string& where) {
  if (part.empty() || part == "." || part == ".." || part.find('/') != std::string::npos)
    throw Error(where, cat("image-folder: invalid ", what, " '", part, "' (must be a plain file or folder name)"));
}

class ImageFolderWriter : public DatasetWriter {
 public:
  explicit ImageFolderWriter(const Params& p)
      : overwrite_(p.get_bool("overwrite")), jpeg_quality_(static_cast<int>(p.get_int("jpeg_quality"))) {}
  ~ImageFolderWriter() override {
    if (!temp_.empty() && !committed_) {
      std::error_code ec;
      fs::remove_all(temp_, ec);  // an uncommitted writer leaves nothing behind
    }
  }

  void open(const std::string& destination) override {
    destination_ = fs::path(destination).lexically_normal();
    if (destination_.filename().empty()) destination_ = destination_.parent_path();
    refuse_existing();
    std::error_code ec;
    fs::create_directories(destination_.parent_path().empty() ? "." : destination_.parent_path(), ec);
    temp_ = temp_name_for(destination_.string());
    if (!fs::create_directory(temp_, ec) || ec)
      throw Error(destination_.string(), cat("image-folder: cannot create the temporary folder ", temp_.string(), ": ",
                                             ec.message()));
  }

  void write(const Sample& sample) override {
    if (temp_.empty()) throw Error("image-folder", "write() before open()");
    if (committed_) throw Error(destination_.string(), "image-folder: write() after commit()");
    const std::string where = destination_.string() + "/" + sample_where(sample);
    const std::string identity = identity_of(sample);
    check_component(identity, "identity name", where);
    check_component(sample.name, "file name", where);
    const ImageFormat format = format_of_name(sample.name);
    if (format == ImageFormat::Unknown)
      throw Error(where, "image-folder: the file name must end in .jpg, .jpeg or .png (it chooses the format)");
    const fs::path folder = temp_ / identity;
    std::error_code ec;
    fs::create_directories(folder, ec);
    const fs::path file = folder / sample.name;
    if (fs::exists(file, ec)) throw Error(where, "image-folder: two samples with the same identity and file name");
    const std::string bytes = file_bytes_of(sample, format, jpeg_quality_, where);
    std::ofstream out(file, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.close();
    if (!out) throw Error(file.string(), "image-folder: write failed (disk full?)");
  }

  void commit() override {
    if (temp_.empty()) throw Error("image-folder", "commit() before open()");
    if (committed_) return;
    refuse_existing();
    std::error_code ec;
    fs::path old;
    if (fs::exists(destination_, ec)) {  // empty, or overwrite allowed: move aside, then swap in
      old = temp_name_for(destination_.string() + ".old");
      fs::rename(destination_, old, ec);
      if (ec) throw Error(destination_.string(), cat("image-folder: cannot replace the destination: ", ec.message()));
    }
    fs::rename(temp_, destination_, ec);
    if (ec) {
      if (!old.empty()) fs::rename(old, destination_, ec);
      throw Error(destination_.string(), cat("image-folder: cannot publish the dataset: ", ec.message()));
    }
    committed_ = true;
    if (!old.empty()) fs::remove_all(old, ec);
  }

 private:
  void refuse_existing() const {
    if (!overwrite_ && is_non_empty_dir(destination_))
      throw Error(destination_.string(),
                  "image-folder: the destination exists and is not empty; refusing to overwrite it (set overwrite: true)");
  }

  bool overwrite_;
  int jpeg_quality_;
  fs::path destination_, temp_;
  bool committed_ = false;
};

}  // namespace

void register_image_folder(FactoryList& registry) {
  registry.add(Kind::DatasetReader, "image-folder", "1.0.0", "Reads <root>/<identity>/<image>; labels follow the sorted identity folders",
               {}, [](const Params&, Host&) -> std::unique_ptr<Plugin> { return std::make_unique<ImageFolderReader>(); });
  registry.add(Kind::DatasetWriter, "image-folder", "1.0.0",
               "Writes <dest>/<identity>/<name> (PNG or JPEG by the name), published by renaming a temporary folder",
               {ParamSpec::Bool("overwrite", false, "replace an existing non-empty destination"),
                ParamSpec::Int("jpeg_quality", 95, "JPEG quality when an image must be encoded").range(1, 100)},
               [](const Params& p, Host&) -> std::unique_ptr<Plugin> { return std::make_unique<ImageFolderWriter>(p); });
}

}  // namespace admis::datasets
