// TFace's TFRecord face datasets: shards NAME-%05d.tfrecord of records
//   u64 LE length | u32 masked CRC32C(length bytes) | tf.train.Example | u32 masked CRC32C(Example)
// with Example.features.feature['image'].bytes_list.value[0] the encoded JPEG, and an
// index NAME.index of lines "<image path>\t<shard number>\t<byte offset>". The label is the
// image path's parent folder name (TFace IndexTFRDataset, ADMIS img2tfrecord).

#include <algorithm>
#include <array>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <system_error>

#include "dataset_util.h"
#include "datasets.h"
#include "admis/sdk/tfrecord.h"
#include "example.pb.h"

namespace admis::datasets {
namespace {

namespace fs = std::filesystem;


std::string shard_path(const std::string& prefix, std::int64_t shard) {
  char number[16];
  std::snprintf(number, sizeof number, "-%05lld", static_cast<long long>(shard));
  return prefix + number + ".tfrecord";
}

// DIR/NAME -> DIR/NAME (the index is DIR/NAME.index). A trailing ".index" is accepted too.
std::string dataset_prefix(std::string source) {
  const std::string suffix = ".index";
  if (source.size() > suffix.size() && source.compare(source.size() - suffix.size(), suffix.size(), suffix) == 0)
    source.resize(source.size() - suffix.size());
  return source;
}

bool all_integers(const std::vector<std::string>& names) {
  return std::all_of(names.begin(), names.end(), [](const std::string& s) {
    return !s.empty() && s.size() < 18 && std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c); });
  });
}

class TFRecordReader : public DatasetReader {
 public:
  void open(const std::string& source) override {
    if (source.empty())
      throw Error("dataset-reader/tfrecord", "no data path given: set data_path to DIR/NAME (the index DIR/NAME.index "
                                             "and the shards DIR/NAME-00000.tfrecord ...)");
    prefix_ = dataset_prefix(source);
    const std::string index_path = prefix_ + ".index";
    std::ifstream in(index_path);
    if (!in)
      throw Error(index_path, "tfrecord: index file not found (a tfrecord dataset DIR/NAME needs DIR/NAME.index beside "
                              "its shards DIR/NAME-00000.tfrecord ...)");
    std::string line;
    std::size_t line_number = 0;
    std::map<std::string, std::int64_t> label_of;
    while (std::getline(in, line)) {
      ++line_number;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty()) continue;
      const auto t1 = line.find('\t'), t2 = line.find('\t', t1 == std::string::npos ? t1 : t1 + 1);
      const std::string where = cat(index_path, ":", line_number);
      if (t1 == std::string::npos || t2 == std::string::npos)
        throw Error(where, "tfrecord: expected '<image path>\\t<shard number>\\t<byte offset>'");
      Entry e;
      const fs::path image_path = line.substr(0, t1);
      e.path = image_path.string();
      e.name = image_path.filename().string();
      e.label_name = image_path.parent_path().filename().string();
      if (e.label_name.empty()) throw Error(where, cat("tfrecord: image path '", e.path, "' has no parent folder (the label)"));
      try {
        std::size_t used = 0;
        e.shard = std::stoll(line.substr(t1 + 1, t2 - t1 - 1), &used);
        e.offset = std::stoull(line.substr(t2 + 1));
      } catch (const std::exception&) {
        throw Error(where, "tfrecord: the shard number and byte offset must be integers");
      }
      label_of.emplace(e.label_name, 0);
      entries_.push_back(std::move(e));
    }
    // Identities in order; numeric folder names in numeric order, so label == int(folder)
    // for TFace's 0..K-1 folders.
    for (const auto& [name, unused] : label_of) classes_.push_back(name);
    if (all_integers(classes_))
      std::sort(classes_.begin(), classes_.end(), [](const std::string& a, const std::string& b) {
        return std::stoll(a) < std::stoll(b);
      });
    for (std::size_t i = 0; i < classes_.size(); ++i) label_of[classes_[i]] = static_cast<std::int64_t>(i);
    for (auto& e : entries_) {
      e.label = label_of.at(e.label_name);
      if (!shards_.count(e.shard)) shards_.emplace(e.shard, std::make_unique<RandomAccessFile>(shard_path(prefix_, e.shard)));
    }
  }

  std::int64_t size() const override { return static_cast<std::int64_t>(entries_.size()); }
  std::vector<std::string> class_names() const override { return classes_; }

  Sample read(std::int64_t index) const override {
    if (index < 0 || index >= size())
      throw Error(prefix_, cat("tfrecord: index ", index, " out of range [0, ", size(), ")"));
    const Entry& e = entries_[static_cast<std::size_t>(index)];
    const RandomAccessFile& file = *shards_.at(e.shard);
    const std::string at = cat("record at byte offset ", e.offset, " (", e.path, ")");
    char head[12];
    if (file.read_at(e.offset, head, 12) != 12)
      throw Error(file.path(), cat("tfrecord: truncated ", at, ": the file ends at byte ", file.size()));
    std::uint64_t length = 0;
    if (!tfrecord::read_header(head, length))
      throw Error(file.path(), cat("tfrecord: bad length CRC in ", at));
    if (length > file.size())
      throw Error(file.path(), cat("tfrecord: truncated ", at, ": length ", length, " exceeds the file"));
    std::string data(length + 4, '\0');
    if (file.read_at(e.offset + 12, data.data(), data.size()) != data.size())
      throw Error(file.path(), cat("tfrecord: truncated ", at, ": ", length, " bytes of data announced, the file ends at byte ",
                                   file.size()));
    if (!tfrecord::payload_intact(data.data(), length, data.data() + length))
      throw Error(file.path(), cat("tfrecord: bad data CRC in ", at));
    tensorflow::Example example;
    if (!example.ParseFromArray(data.data(), static_cast<int>(length)))
      throw Error(file.path(), cat("tfrecord: ", at, " is not a tf.train.Example"));
    const auto& features = example.features().feature();
    const auto it = features.find("image");
    if (it == features.end() || !it->second.has_bytes_list() || it->second.bytes_list().value_size() < 1)
      throw Error(file.path(), cat("tfrecord: ", at, " has no feature 'image' with bytes"));
    Sample s;
    s.encoded = it->second.bytes_list().value(0);
    s.image = decode_image(s.encoded, cat(file.path(), ": ", at));
    s.label = e.label;
    s.label_name = e.label_name;
    s.name = e.name;
    return s;
  }

 private:
  struct Entry {
    std::string path, name, label_name;
    std::int64_t shard = 0;
    std::uint64_t offset = 0;
    std::int64_t label = -1;
  };
  std::string prefix_;
  std::vector<Entry> entries_;
  std::vector<std::string> classes_;
  std::map<std::int64_t, std::unique_ptr<RandomAccessFile>> shards_;
};

class TFRecordWriter : public DatasetWriter {
 public:
  explicit TFRecordWriter(const Params& p)
      : shard_records_(p.get_int("shard_records")),
        shard_bytes_(p.get_int("shard_bytes")),
        jpeg_quality_(static_cast<int>(p.get_int("jpeg_quality"))),
        overwrite_(p.get_bool("overwrite")) {}
  ~TFRecordWriter() override {
    if (committed_) return;
    out_.close();
    std::error_code ec;
    for (const auto& t : temp_shards_) fs::remove(t, ec);
    if (!temp_index_.empty()) fs::remove(temp_index_, ec);
  }

  void open(const std::string& destination) override {
    prefix_ = dataset_prefix(destination);
    if (fs::path(prefix_).filename().empty())
      throw Error(destination, "tfrecord: give the destination as DIR/NAME (writes DIR/NAME.index and DIR/NAME-00000.tfrecord ...)");
    refuse_existing();
    std::error_code ec;
    const fs::path dir = fs::path(prefix_).parent_path();
    if (!dir.empty()) fs::create_directories(dir, ec);
    temp_index_ = temp_name_for(prefix_ + ".index");
    index_.open(temp_index_, std::ios::binary | std::ios::trunc);
    if (!index_) throw Error(temp_index_, "tfrecord: cannot create the temporary index file");
  }

  void write(const Sample& sample) override {
    if (temp_index_.empty()) throw Error("tfrecord", "write() before open()");
    if (committed_) throw Error(prefix_, "tfrecord: write() after commit()");
    const std::string where = prefix_ + ": " + sample_where(sample);
    const std::string identity = identity_of(sample);
    if (identity.empty() || identity.find_first_of("/\t\n") != std::string::npos)
      throw Error(where, "tfrecord: the identity name (the label) must be a plain folder name");
    if (sample.name.empty() || sample.name.find_first_of("/\t\n") != std::string::npos)
      throw Error(where, "tfrecord: the sample name must be a plain file name");
    tensorflow::Example example;
    auto& feature = (*example.mutable_features()->mutable_feature())["image"];
    feature.mutable_bytes_list()->add_value(file_bytes_of(sample, ImageFormat::Jpeg, jpeg_quality_, where));
    std::string data;
    if (!example.SerializeToString(&data)) throw Error(where, "tfrecord: cannot serialize the Example");
    const std::uint64_t record_size = tfrecord::kHeaderSize + data.size() + tfrecord::kFooterSize;
    const bool full = (shard_records_ > 0 && shard_count_ >= shard_records_) ||
                      (shard_bytes_ > 0 && shard_count_ > 0 && shard_offset_ + record_size > static_cast<std::uint64_t>(shard_bytes_));
    if (!out_.is_open() || full) next_shard();
    const std::string record = tfrecord::frame(data);
    out_.write(record.data(), static_cast<std::streamsize>(record.size()));
    if (!out_) throw Error(temp_shards_.back(), "tfrecord: write failed (disk full?)");
    index_ << identity << '/' << sample.name << '\t' << (temp_shards_.size() - 1) << '\t' << shard_offset_ << '\n';
    shard_offset_ += record_size;
    ++shard_count_;
  }

  void commit() override {
    if (temp_index_.empty()) throw Error("tfrecord", "commit() before open()");
    if (committed_) return;
    refuse_existing();
    out_.close();
    index_.close();
    if (!out_ || !index_) throw Error(prefix_, "tfrecord: write failed while closing the files (disk full?)");
    std::error_code ec;
    // Shards first, the index last: a dataset is visible only once its index is.
    for (std::size_t i = 0; i < temp_shards_.size(); ++i) {
      fs::rename(temp_shards_[i], shard_path(prefix_, static_cast<std::int64_t>(i)), ec);
      if (ec) throw Error(shard_path(prefix_, static_cast<std::int64_t>(i)), cat("tfrecord: cannot publish the shard: ", ec.message()));
    }
    // Shards of an overwritten, larger dataset would otherwise linger.
    for (std::int64_t i = static_cast<std::int64_t>(temp_shards_.size()); fs::exists(shard_path(prefix_, i)); ++i)
      fs::remove(shard_path(prefix_, i), ec);
    fs::rename(temp_index_, prefix_ + ".index", ec);
    if (ec) throw Error(prefix_ + ".index", cat("tfrecord: cannot publish the index: ", ec.message()));
    committed_ = true;
  }

 private:
  void refuse_existing() const {
    if (overwrite_) return;
    for (const std::string& p : {prefix_ + ".index", shard_path(prefix_, 0)})
      if (fs::exists(p))
        throw Error(p, "tfrecord: the destination dataset already exists; refusing to overwrite it (set overwrite: true)");
  }

  void next_shard() {
    if (out_.is_open()) {
      out_.close();
      if (!out_) throw Error(temp_shards_.back(), "tfrecord: write failed (disk full?)");
    }
    temp_shards_.push_back(temp_name_for(shard_path(prefix_, static_cast<std::int64_t>(temp_shards_.size()))));
    out_.open(temp_shards_.back(), std::ios::binary | std::ios::trunc);
    if (!out_) throw Error(temp_shards_.back(), "tfrecord: cannot create the shard file");
    shard_offset_ = 0;
    shard_count_ = 0;
  }

  std::int64_t shard_records_, shard_bytes_;
  int jpeg_quality_;
  bool overwrite_;
  std::string prefix_, temp_index_;
  std::vector<std::string> temp_shards_;
  std::ofstream out_, index_;
  std::uint64_t shard_offset_ = 0;
  std::int64_t shard_count_ = 0;
  bool committed_ = false;
};

}  // namespace

void register_tfrecord(FactoryList& registry) {
  registry.add(Kind::DatasetReader, "tfrecord", "1.0.0",
               "Reads TFace TFRecord shards through their index (source DIR/NAME: DIR/NAME.index, DIR/NAME-00000.tfrecord ...)",
               {}, [](const Params&, Host&) -> std::unique_ptr<Plugin> { return std::make_unique<TFRecordReader>(); });
  registry.add(Kind::DatasetWriter, "tfrecord", "1.0.0",
               "Writes TFace TFRecord shards and their index (destination DIR/NAME), JPEG images",
               {ParamSpec::Int("shard_records", 0, "records per shard (0: no limit)").at_least(0),
                ParamSpec::Int("shard_bytes", 0, "bytes per shard, at least one record each (0: no limit)").at_least(0),
                ParamSpec::Int("jpeg_quality", 95, "JPEG quality when an image must be encoded").range(1, 100),
                ParamSpec::Bool("overwrite", false, "replace an existing dataset of the same name")},
               [](const Params& p, Host&) -> std::unique_ptr<Plugin> { return std::make_unique<TFRecordWriter>(p); });
}

}  // namespace admis::datasets
