// insightface's MXNet RecordIO face datasets: PREFIX.rec and PREFIX.idx.
//
// .rec: records of  u32 magic 0xced7230a | u32 lrecord = cflag << 29 | length | data,
// padded to 4 bytes. dmlc-core splits a record wherever its data holds the magic at a
// 4-byte-aligned position: parts with cflag 1 (first), 2 (middle), 3 (last), the magic
// itself dropped between them. Each record's data is an IRHeader {u32 flag, f32 label,
// u64 id, u64 id2}, then `flag` float32 labels when flag > 0, then the encoded image.
// Record 0 is the dataset header: flag 2, labels (num_images + 1, num_images + 1 + num_ids);
// images are records 1..num_images, followed by one record per identity whose labels are
// the identity's image range [start, end) (insightface MXFaceDataset, face2rec).
// .idx: lines "<key>\t<byte offset>".

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <system_error>

#include "dataset_util.h"
#include "datasets.h"

namespace admis::datasets {
namespace {

namespace fs = std::filesystem;

constexpr std::uint32_t kMagic = 0xced7230a;
constexpr std::uint32_t kLengthMask = (1u << 29) - 1;
constexpr std::size_t kHeaderSize = 24;  // struct 'IfQQ'

std::uint32_t load_u32(const char* p) {
  std::uint32_t v;
  std::memcpy(&v, p, 4);  // the format is little-endian, as is every platform we build for
  return v;
}

struct Record {
  std::uint32_t flag = 0;
  std::vector<float> labels;  // the header's label, or the `flag` labels that follow it
  std::uint64_t id = 0, id2 = 0;
  std::string payload;
};

std::string pack(const Record& r) {
  std::string out(kHeaderSize, '\0');
  const std::uint32_t flag = r.labels.size() == 1 ? 0u : static_cast<std::uint32_t>(r.labels.size());
  const float label = r.labels.size() == 1 ? r.labels[0] : 0.0f;
  std::memcpy(out.data(), &flag, 4);
  std::memcpy(out.data() + 4, &label, 4);
  std::memcpy(out.data() + 8, &r.id, 8);
  std::memcpy(out.data() + 16, &r.id2, 8);
  if (flag > 0) out.append(reinterpret_cast<const char*>(r.labels.data()), r.labels.size() * sizeof(float));
  out += r.payload;
  return out;
}

Record unpack(const std::string& data, const std::string& file, const std::string& at) {
  if (data.size() < kHeaderSize) throw Error(file, cat("recordio: ", at, " is shorter than its IRHeader"));
  Record r;
  float label;
  std::memcpy(&r.flag, data.data(), 4);
  std::memcpy(&label, data.data() + 4, 4);
  std::memcpy(&r.id, data.data() + 8, 8);
  std::memcpy(&r.id2, data.data() + 16, 8);
  std::size_t start = kHeaderSize;
  if (r.flag > 0) {
    if (data.size() < kHeaderSize + 4ull * r.flag)
      throw Error(file, cat("recordio: ", at, " announces ", r.flag, " labels but is too short for them"));
    r.labels.resize(r.flag);
    std::memcpy(r.labels.data(), data.data() + kHeaderSize, 4ull * r.flag);
    start += 4ull * r.flag;
  } else {
    r.labels = {label};
  }
  r.payload = data.substr(start);
  return r;
}

// The record's data at `offset`, with split parts joined again.
std::string read_record(const RandomAccessFile& file, std::uint64_t offset) {
  std::string data;
  std::uint64_t at = offset;
  for (int part = 0;; ++part) {
    char head[8];
    if (file.read_at(at, head, 8) != 8)
      throw Error(file.path(), cat("recordio: truncated record at byte offset ", at, ": the file ends at byte ", file.size()));
    const std::uint32_t magic = load_u32(head);
    if (magic != kMagic) {
      char text[16];
      std::snprintf(text, sizeof text, "0x%08x", magic);
      throw Error(file.path(), cat("recordio: bad magic ", text, " at byte offset ", at, " (expected 0xced7230a)"));
    }
    const std::uint32_t lrecord = load_u32(head + 4);
    const std::uint32_t cflag = lrecord >> 29, length = lrecord & kLengthMask;
    if ((part == 0) != (cflag == 0 || cflag == 1))
      throw Error(file.path(), cat("recordio: record at byte offset ", offset, " has a broken part sequence (cflag ", cflag, ")"));
    if (part > 0) data.append(reinterpret_cast<const char*>(&kMagic), 4);  // the magic the writer cut out
    const std::size_t before = data.size();
    data.resize(before + length);
    if (file.read_at(at + 8, data.data() + before, length) != length)
      throw Error(file.path(), cat("recordio: truncated record at byte offset ", at, ": ", length,
                                   " bytes announced, the file ends at byte ", file.size()));
    at += 8 + ((length + 3u) & ~3u);
    if (cflag == 0 || cflag == 3) return data;
  }
}

std::string dataset_prefix(std::string source) {
  for (const std::string suffix : {".rec", ".idx"})
    if (source.size() > suffix.size() && source.compare(source.size() - suffix.size(), suffix.size(), suffix) == 0) {
      source.resize(source.size() - suffix.size());
      break;
    }
  return source;
}

std::int64_t label_value(float label) { return static_cast<std::int64_t>(std::lround(label)); }

class RecordIOReader : public DatasetReader {
 public:
  void open(const std::string& source) override {
    if (source.empty())
      throw Error("dataset-reader/recordio", "no data path given: set data_path to PREFIX (the files PREFIX.rec and "
                                             "PREFIX.idx)");
    prefix_ = dataset_prefix(source);
    const std::string idx_path = prefix_ + ".idx";
    std::ifstream in(idx_path);
    if (!in) throw Error(idx_path, "recordio: index file not found (a recordio dataset PREFIX needs PREFIX.rec and PREFIX.idx)");
    std::map<std::int64_t, std::uint64_t> offsets;
    std::string line;
    for (std::size_t n = 1; std::getline(in, line); ++n) {
      if (line.empty() || line == "\r") continue;
      try {
        std::size_t used = 0;
        const std::int64_t key = std::stoll(line, &used);
        offsets[key] = std::stoull(line.substr(used));
      } catch (const std::exception&) {
        throw Error(cat(idx_path, ":", n), "recordio: expected '<key>\\t<byte offset>'");
      }
    }
    rec_ = std::make_unique<RandomAccessFile>(prefix_ + ".rec");
    std::int64_t num_ids = -1;
    std::vector<std::int64_t> keys;
    const auto header_it = offsets.find(0);
    Record header;
    if (header_it != offsets.end()) header = unpack(read_record(*rec_, header_it->second), rec_->path(), "record 0");
    if (header_it != offsets.end() && header.flag > 0) {
      // insightface: images are records 1 .. label[0]-1, identities label[0] .. label[1]-1.
      const std::int64_t end = label_value(header.labels[0]);
      for (std::int64_t k = 1; k < end; ++k) keys.push_back(k);
      if (header.labels.size() >= 2) num_ids = label_value(header.labels[1]) - end;
    } else {
      for (const auto& [k, unused] : offsets) keys.push_back(k);
    }
    for (std::int64_t k : keys) {
      const auto it = offsets.find(k);
      if (it == offsets.end()) throw Error(idx_path, cat("recordio: image record ", k, " is missing from the index"));
      offsets_.push_back(it->second);
      keys_.push_back(k);
    }
    if (num_ids < 0) {  // no identity count in the header: the largest label decides
      std::int64_t max_label = -1;
      for (std::size_t i = 0; i < offsets_.size(); ++i)
        max_label = std::max(max_label, label_value(unpack(read_record(*rec_, offsets_[i]), rec_->path(), "").labels[0]));
      num_ids = max_label + 1;
    }
    for (std::int64_t i = 0; i < num_ids; ++i) classes_.push_back(std::to_string(i));
  }

  std::int64_t size() const override { return static_cast<std::int64_t>(keys_.size()); }
  std::vector<std::string> class_names() const override { return classes_; }

  Sample read(std::int64_t index) const override {
    if (index < 0 || index >= size()) throw Error(prefix_, cat("recordio: index ", index, " out of range [0, ", size(), ")"));
    const std::uint64_t offset = offsets_[static_cast<std::size_t>(index)];
    const std::string at = cat("record ", keys_[static_cast<std::size_t>(index)], " at byte offset ", offset);
    Record r = unpack(read_record(*rec_, offset), rec_->path(), at);
    Sample s;
    s.label = label_value(r.labels[0]);
    s.label_name = std::to_string(s.label);
    s.image = decode_image(r.payload, cat(rec_->path(), ": ", at));
    const ImageFormat format = sniff_format(r.payload);
    s.name = cat(keys_[static_cast<std::size_t>(index)], format == ImageFormat::Unknown ? ".jpg" : extension_of(format));
    s.encoded = std::move(r.payload);
    return s;
  }

 private:
  std::string prefix_;
  std::unique_ptr<RandomAccessFile> rec_;
  std::vector<std::int64_t> keys_;
  std::vector<std::uint64_t> offsets_;
  std::vector<std::string> classes_;
};

class RecordIOWriter : public DatasetWriter {
 public:
  explicit RecordIOWriter(const Params& p)
      : jpeg_quality_(static_cast<int>(p.get_int("jpeg_quality"))),
        encoding_(p.get_string("encoding") == "png" ? ImageFormat::Png : ImageFormat::Jpeg),
        overwrite_(p.get_bool("overwrite")) {}
  ~RecordIOWriter() override {
    if (committed_ || temp_rec_.empty()) return;
    rec_.close();
    idx_.close();
    std::error_code ec;
    fs::remove(temp_rec_, ec);
    fs::remove(temp_idx_, ec);
  }

  void open(const std::string& destination) override {
    prefix_ = dataset_prefix(destination);
    if (fs::path(prefix_).filename().empty())
      throw Error(destination, "recordio: give the destination as PREFIX (writes PREFIX.rec and PREFIX.idx)");
    refuse_existing();
    std::error_code ec;
    const fs::path dir = fs::path(prefix_).parent_path();
    if (!dir.empty()) fs::create_directories(dir, ec);
    temp_rec_ = temp_name_for(prefix_ + ".rec");
    temp_idx_ = temp_name_for(prefix_ + ".idx");
    rec_.open(temp_rec_, std::ios::binary | std::ios::trunc);
    idx_.open(temp_idx_, std::ios::binary | std::ios::trunc);
    if (!rec_ || !idx_) throw Error(prefix_, "recordio: cannot create the temporary files");
    // Record 0 is rewritten with the final counts on commit; its size does not change.
    append(0, header_record(0, 0));
  }

  void write(const Sample& sample) override {
    if (temp_rec_.empty()) throw Error("recordio", "write() before open()");
    if (committed_) throw Error(prefix_, "recordio: write() after commit()");
    const std::string where = prefix_ + ": " + sample_where(sample);
    if (sample.label < 0 || sample.label >= (1 << 24))
      throw Error(where, cat("recordio: label ", sample.label, " must be in [0, 2^24) (labels are stored as float32)"));
    const std::int64_t key = num_images_ + 1;
    auto range = ranges_.find(sample.label);
    if (range != ranges_.end() && range->second.second != key)
      throw Error(where, cat("recordio: the images of identity ", sample.label,
                             " are not consecutive; insightface's identity ranges need each identity's images together"));
    Record r;
    r.labels = {static_cast<float>(sample.label)};
    r.id = static_cast<std::uint64_t>(key);
    const ImageFormat source_format = sniff_format(sample.encoded);
    r.payload = source_format != ImageFormat::Unknown ? sample.encoded
                                                      : file_bytes_of(sample, encoding_, jpeg_quality_, where);
    append(key, pack(r));
    num_images_ = key;
    if (range == ranges_.end()) ranges_[sample.label] = {key, key + 1};
    else range->second.second = key + 1;
  }

  void commit() override {
    if (temp_rec_.empty()) throw Error("recordio", "commit() before open()");
    if (committed_) return;
    refuse_existing();
    const std::int64_t num_ids = ranges_.empty() ? 0 : ranges_.rbegin()->first + 1;
    const std::int64_t first_id_key = num_images_ + 1;
    for (std::int64_t label = 0; label < num_ids; ++label) {
      const auto it = ranges_.find(label);
      const auto range = it == ranges_.end() ? std::pair<std::int64_t, std::int64_t>{0, 0} : it->second;
      Record r;
      r.labels = {static_cast<float>(range.first), static_cast<float>(range.second)};
      r.id = static_cast<std::uint64_t>(first_id_key + label);
      append(first_id_key + label, pack(r));
    }
    rec_.seekp(0);
    write_framed(header_record(first_id_key, first_id_key + num_ids));
    rec_.close();
    idx_.close();
    if (!rec_ || !idx_) throw Error(prefix_, "recordio: write failed while closing the files (disk full?)");
    std::error_code ec;
    fs::rename(temp_rec_, prefix_ + ".rec", ec);
    if (!ec) fs::rename(temp_idx_, prefix_ + ".idx", ec);  // the index last: it makes the dataset readable
    if (ec) throw Error(prefix_, cat("recordio: cannot publish the dataset: ", ec.message()));
    committed_ = true;
  }

 private:
  static std::string header_record(std::int64_t images_end, std::int64_t ids_end) {
    Record r;
    r.labels = {static_cast<float>(images_end), static_cast<float>(ids_end)};
    return pack(r);
  }

  void refuse_existing() const {
    if (overwrite_) return;
    for (const std::string& p : {prefix_ + ".rec", prefix_ + ".idx"})
      if (fs::exists(p))
        throw Error(p, "recordio: the destination dataset already exists; refusing to overwrite it (set overwrite: true)");
  }

  void append(std::int64_t key, const std::string& data) {
    idx_ << key << '\t' << position_ << '\n';
    position_ += write_framed(data);
    if (!rec_ || !idx_) throw Error(temp_rec_, "recordio: write failed (disk full?)");
  }

  // dmlc-core's RecordIOWriter::WriteRecord: split at aligned magics, pad to 4 bytes.
  std::uint64_t write_framed(const std::string& data) {
    const std::uint32_t length = static_cast<std::uint32_t>(data.size());
    if (data.size() > kLengthMask) throw Error(prefix_, "recordio: a record must be smaller than 2^29 bytes");
    std::uint64_t written = 0;
    auto part = [&](std::uint32_t cflag, std::uint32_t begin, std::uint32_t end) {
      const std::uint32_t lrecord = (cflag << 29) | (end - begin);
      rec_.write(reinterpret_cast<const char*>(&kMagic), 4);
      rec_.write(reinterpret_cast<const char*>(&lrecord), 4);
      rec_.write(data.data() + begin, end - begin);
      written += 8 + (end - begin);
    };
    std::uint32_t start = 0;
    for (std::uint32_t i = 0; i + 4 <= length; i += 4)
      if (load_u32(data.data() + i) == kMagic) {
        part(start == 0 ? 1u : 2u, start, i);
        start = i + 4;
      }
    part(start == 0 ? 0u : 3u, start, length);
    const std::uint32_t padding = ((length + 3u) & ~3u) - length;
    static const char zeros[4] = {0, 0, 0, 0};
    rec_.write(zeros, padding);
    return written + padding;
  }

  int jpeg_quality_;
  ImageFormat encoding_;
  bool overwrite_;
  std::string prefix_, temp_rec_, temp_idx_;
  std::ofstream rec_, idx_;
  std::uint64_t position_ = 0;
  std::int64_t num_images_ = 0;
  std::map<std::int64_t, std::pair<std::int64_t, std::int64_t>> ranges_;  // label -> [first key, last key + 1)
  bool committed_ = false;
};

}  // namespace

void register_recordio(FactoryList& registry) {
  registry.add(Kind::DatasetReader, "recordio", "1.0.0",
               "Reads insightface MXNet RecordIO datasets (source PREFIX: PREFIX.rec + PREFIX.idx)", {},
               [](const Params&, Host&) -> std::unique_ptr<Plugin> { return std::make_unique<RecordIOReader>(); });
  registry.add(Kind::DatasetWriter, "recordio", "1.0.0",
               "Writes insightface MXNet RecordIO datasets with header and identity records (destination PREFIX)",
               {ParamSpec::String("encoding", "jpeg", "format for samples without an encoded JPEG or PNG file")
                    .one_of({"jpeg", "png"}),
                ParamSpec::Int("jpeg_quality", 95, "JPEG quality when an image must be encoded").range(1, 100),
                ParamSpec::Bool("overwrite", false, "replace an existing dataset of the same prefix")},
               [](const Params& p, Host&) -> std::unique_ptr<Plugin> { return std::make_unique<RecordIOWriter>(p); });
}

}  // namespace admis::datasets
