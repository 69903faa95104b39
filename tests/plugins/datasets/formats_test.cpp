// Dataset readers and writers: the TFace TFRecord fixture, round trips through every
// format, passthrough of encoded bytes, atomic publishing, and corrupt-file messages.

#include <cstring>

#include "datasets_test_util.h"

namespace admis::test::datasets {
namespace {

std::string copy_fixture(const std::string& tag) {
  const std::string dir = temp_dir(tag);
  fs::copy_file(parity_file("Syn_tiny-00000.tfrecord"), dir + "/Syn_tiny-00000.tfrecord");
  fs::copy_file(parity_file("Syn_tiny.index"), dir + "/Syn_tiny.index");
  return dir + "/Syn_tiny";
}

// Encoded JPEG bytes of an image, through the image-folder writer (so OpenCV stays in the plugin).
std::string jpeg_of(const torch::Tensor& image, int quality = 90) {
  const std::string dir = temp_dir("jpeg");
  auto w = make_writer("image-folder", {{"jpeg_quality", quality}});
  w->open(dir + "/out");
  Sample s;
  s.image = image;
  s.label_name = "a";
  s.name = "x.jpg";
  w->write(s);
  w->commit();
  return file_bytes(dir + "/out/a/x.jpg");
}

TEST(TFRecordReader, ReadsTheTFaceFixture) {
  auto r = open_reader("tfrecord", fs::path(parity_file("Syn_tiny.index")).replace_extension("").string());
  ASSERT_EQ(r->size(), 6);
  EXPECT_EQ(r->class_names(), (std::vector<std::string>{"0", "1", "2"}));
  for (std::int64_t i = 0; i < 6; ++i) {
    Sample s = r->read(i);
    EXPECT_EQ(s.label, i / 2);
    EXPECT_EQ(s.label_name, std::to_string(i / 2));
    EXPECT_EQ(s.name, std::to_string(i % 2) + ".jpg");
    ASSERT_TRUE(s.image.defined());
    EXPECT_EQ(s.image.dim(), 3);
    EXPECT_EQ(s.image.size(2), 3);
    EXPECT_GT(s.image.size(0), 0);
    EXPECT_EQ(s.image.scalar_type(), torch::kUInt8);
    EXPECT_EQ(static_cast<unsigned char>(s.encoded[0]), 0xFF);  // the stored JPEG itself
    EXPECT_GT(s.image.to(torch::kFloat32).std().item<double>(), 1.0);  // real content, not a blank decode
  }
}

TEST(TFRecordWriter, RewritesTheTFaceFixtureByteForByte) {
  // Reading TFace's shard and writing it again must give TFace's bytes: same framing,
  // same CRCs, same Example serialization, same offsets in the index.
  auto r = open_reader("tfrecord", fs::path(parity_file("Syn_tiny.index")).replace_extension("").string());
  const std::string prefix = temp_dir("tfr-same") + "/Syn_tiny";
  auto w = make_writer("tfrecord");
  w->open(prefix);
  for (std::int64_t i = 0; i < r->size(); ++i) w->write(r->read(i));
  w->commit();
  EXPECT_EQ(file_bytes(prefix + "-00000.tfrecord"), file_bytes(parity_file("Syn_tiny-00000.tfrecord")));
  const std::string index = file_bytes(prefix + ".index");
  EXPECT_THAT(index, ::testing::HasSubstr("1/0.jpg\t0\t30870\n"));
  EXPECT_THAT(index, ::testing::HasSubstr("2/1.jpg\t0\t76939\n"));
}

TEST(ImageFolder, RoundTripKeepsPixelsLabelsAndNames) {
  const std::string dest = temp_dir("if-rt") + "/faces";
  const auto samples = test_samples(9, 3);
  auto w = make_writer("image-folder");
  w->open(dest);
  for (const auto& s : samples) w->write(s);
  EXPECT_FALSE(fs::exists(dest)) << "visible before commit";
  w->commit();
  auto r = open_reader("image-folder", dest);
  ASSERT_EQ(r->size(), 9);
  EXPECT_EQ(r->class_names(), (std::vector<std::string>{"id0", "id1", "id2"}));
  std::map<std::string, Sample> by_name;
  for (std::int64_t i = 0; i < r->size(); ++i) {
    Sample s = r->read(i);
    by_name[s.name] = s;
  }
  for (const auto& s : samples) {
    ASSERT_TRUE(by_name.count(s.name)) << s.name;
    const Sample& got = by_name[s.name];
    EXPECT_TRUE(torch::equal(got.image, s.image)) << s.name;
    EXPECT_EQ(got.label, s.label);
    EXPECT_EQ(got.label_name, s.label_name);
  }
}

TEST(ImageFolder, ReusesEncodedBytesWhenTheFormatMatches) {
  const std::string jpeg = jpeg_of(test_image(3));
  const std::string dest = temp_dir("if-pass") + "/faces";
  auto w = make_writer("image-folder");
  w->open(dest);
  Sample s;
  s.encoded = jpeg;  // no pixels at all: must be copied, not re-encoded
  s.label_name = "7";
  s.name = "a.jpg";
  w->write(s);
  Sample t = s;  // a PNG name: the JPEG must be decoded and written as PNG
  t.name = "b.png";
  w->write(t);
  w->commit();
  EXPECT_EQ(file_bytes(dest + "/7/a.jpg"), jpeg);
  EXPECT_EQ(file_bytes(dest + "/7/b.png").substr(1, 3), "PNG");
  auto r = open_reader("image-folder", dest);
  EXPECT_TRUE(torch::equal(r->read(0).image, r->read(1).image));  // same pixels both ways
}

TEST(ImageFolder, RefusesANonEmptyDestinationUnlessOverwrite) {
  const std::string dest = temp_dir("if-over") + "/faces";
  fs::create_directories(dest + "/old");
  put_bytes(dest + "/old/keep.txt", "x");
  auto w = make_writer("image-folder");
  const std::string message = error_of([&] { w->open(dest); });
  EXPECT_THAT(message, ::testing::HasSubstr(dest));
  EXPECT_THAT(message, ::testing::HasSubstr("set overwrite: true"));
  EXPECT_TRUE(fs::exists(dest + "/old/keep.txt"));

  auto w2 = make_writer("image-folder", {{"overwrite", true}});
  w2->open(dest);
  for (const auto& s : test_samples(2, 1)) w2->write(s);
  w2->commit();
  EXPECT_FALSE(fs::exists(dest + "/old"));
  EXPECT_TRUE(fs::exists(dest + "/id0/0.png"));
  EXPECT_EQ(std::distance(fs::directory_iterator(fs::path(dest).parent_path()), fs::directory_iterator()), 1)
      << "temporary or old folders left behind";
}

TEST(DatasetWriters, AnUncommittedWriterLeavesNothing) {
  for (const std::string format : {"image-folder", "tfrecord", "recordio"}) {
    const std::string dir = temp_dir("uncommitted-" + format);
    {
      auto w = make_writer(format);
      w->open(dir + "/data");
      for (const auto& s : test_samples(3, 2)) w->write(s);
    }
    EXPECT_TRUE(fs::is_empty(dir)) << format << " left " << fs::directory_iterator(dir)->path();
  }
}

TEST(TFRecord, RoundTripPassesJpegBytesThroughAndShards) {
  const std::string prefix = temp_dir("tfr-rt") + "/sub/Syn";
  auto samples = test_samples(7, 3, ".jpg");
  for (auto& s : samples) {
    s.encoded = jpeg_of(s.image);
    s.image = torch::Tensor();
  }
  auto w = make_writer("tfrecord", {{"shard_records", 3}});
  w->open(prefix);
  for (const auto& s : samples) w->write(s);
  EXPECT_FALSE(fs::exists(prefix + ".index"));
  w->commit();
  for (int shard : {0, 1, 2}) EXPECT_TRUE(fs::exists(prefix + "-0000" + std::to_string(shard) + ".tfrecord")) << shard;
  EXPECT_FALSE(fs::exists(prefix + "-00003.tfrecord"));
  EXPECT_THAT(file_bytes(prefix + ".index"), ::testing::HasSubstr("id2/6.jpg\t2\t0\n"));
  auto r = open_reader("tfrecord", prefix);
  ASSERT_EQ(r->size(), 7);
  EXPECT_EQ(r->class_names(), (std::vector<std::string>{"id0", "id1", "id2"}));
  for (std::int64_t i = 0; i < 7; ++i) {
    Sample got = r->read(i);
    EXPECT_EQ(got.encoded, samples[i].encoded) << i;
    EXPECT_EQ(got.label, samples[i].label);
    EXPECT_EQ(got.label_name, samples[i].label_name);
    EXPECT_EQ(got.name, samples[i].name);
  }
}

TEST(TFRecord, EncodesPixelOnlySamplesAsJpeg) {
  const std::string prefix = temp_dir("tfr-enc") + "/set";
  const auto samples = test_samples(4, 2);
  auto w = make_writer("tfrecord", {{"jpeg_quality", 100}, {"shard_bytes", 1}});  // one record per shard
  w->open(prefix);
  for (const auto& s : samples) w->write(s);
  w->commit();
  EXPECT_TRUE(fs::exists(prefix + "-00003.tfrecord"));
  auto r = open_reader("tfrecord", prefix);
  for (std::int64_t i = 0; i < 4; ++i) {
    Sample got = r->read(i);
    // The same encoder at the same quality as image-folder's: the same file.
    EXPECT_EQ(got.encoded, jpeg_of(samples[i].image, 100)) << i;
    EXPECT_EQ(got.label_name, samples[i].label_name);
  }
}

TEST(TFRecord, CorruptFilesAreReportedByFileAndOffset) {
  {  // bad length CRC: the 4 bytes after the length of record 1 (offset 15421)
    const std::string prefix = copy_fixture("tfr-lcrc");
    corrupt_byte(prefix + "-00000.tfrecord", 15421 + 9);
    auto r = open_reader("tfrecord", prefix);
    EXPECT_NO_THROW(r->read(0));
    const std::string m = error_of([&] { r->read(1); });
    EXPECT_THAT(m, ::testing::HasSubstr(prefix + "-00000.tfrecord"));
    EXPECT_THAT(m, ::testing::HasSubstr("bad length CRC"));
    EXPECT_THAT(m, ::testing::HasSubstr("byte offset 15421"));
  }
  {  // bad data CRC: a byte inside record 2's Example
    const std::string prefix = copy_fixture("tfr-dcrc");
    corrupt_byte(prefix + "-00000.tfrecord", 30870 + 12 + 100);
    auto r = open_reader("tfrecord", prefix);
    const std::string m = error_of([&] { r->read(2); });
    EXPECT_THAT(m, ::testing::HasSubstr(prefix + "-00000.tfrecord"));
    EXPECT_THAT(m, ::testing::HasSubstr("bad data CRC"));
    EXPECT_THAT(m, ::testing::HasSubstr("byte offset 30870"));
    EXPECT_THAT(m, ::testing::HasSubstr("images/1/0.jpg"));
  }
  {  // truncated: the last record loses its tail
    const std::string prefix = copy_fixture("tfr-trunc");
    const std::string shard = prefix + "-00000.tfrecord";
    fs::resize_file(shard, fs::file_size(shard) - 10);
    auto r = open_reader("tfrecord", prefix);
    const std::string m = error_of([&] { r->read(5); });
    EXPECT_THAT(m, ::testing::HasSubstr(shard));
    EXPECT_THAT(m, ::testing::HasSubstr("truncated record at byte offset 76939"));
  }
  {  // missing index
    const std::string prefix = copy_fixture("tfr-noidx");
    fs::remove(prefix + ".index");
    const std::string m = error_of([&] { open_reader("tfrecord", prefix); });
    EXPECT_THAT(m, ::testing::HasSubstr(prefix + ".index"));
    EXPECT_THAT(m, ::testing::HasSubstr("index file not found"));
  }
}

// RecordIO fields read back independently of the plugin.
struct RawRecord {
  std::uint32_t cflag, length, flag;
  float label;
  std::vector<float> labels;
};
RawRecord raw_record(const std::string& rec, std::size_t offset) {
  const std::string data = file_bytes(rec);
  RawRecord r{};
  std::uint32_t magic, lrecord;
  std::memcpy(&magic, data.data() + offset, 4);
  std::memcpy(&lrecord, data.data() + offset + 4, 4);
  EXPECT_EQ(magic, 0xced7230au);
  r.cflag = lrecord >> 29;
  r.length = lrecord & ((1u << 29) - 1);
  std::memcpy(&r.flag, data.data() + offset + 8, 4);
  std::memcpy(&r.label, data.data() + offset + 12, 4);
  r.labels.resize(r.flag);
  if (r.flag) std::memcpy(r.labels.data(), data.data() + offset + 8 + 24, 4 * r.flag);
  return r;
}

TEST(RecordIO, RoundTripWritesInsightfaceHeaderAndIdentityRecords) {
  const std::string prefix = temp_dir("rec-rt") + "/train";
  auto samples = test_samples(5, 2);
  samples[1].encoded = jpeg_of(samples[1].image);  // passed through unchanged
  auto w = make_writer("recordio", {{"encoding", "png"}});
  w->open(prefix);
  for (const auto& s : samples) w->write(s);
  w->commit();
  // .idx: record 0, five images, two identity records.
  const std::string idx = file_bytes(prefix + ".idx");
  EXPECT_EQ(std::count(idx.begin(), idx.end(), '\n'), 8);
  EXPECT_EQ(idx.substr(0, 4), "0\t0\n");
  const RawRecord header = raw_record(prefix + ".rec", 0);
  EXPECT_EQ(header.cflag, 0u);
  ASSERT_EQ(header.flag, 2u);
  EXPECT_EQ(header.labels, (std::vector<float>{6, 8}));  // (num_images + 1, num_images + 1 + num_ids)
  const auto id1_offset = std::stoull(idx.substr(idx.find("\n7\t") + 3));
  const RawRecord id1 = raw_record(prefix + ".rec", id1_offset);
  EXPECT_EQ(id1.labels, (std::vector<float>{4, 6}));  // identity 1 = image records 4 and 5

  auto r = open_reader("recordio", prefix);
  ASSERT_EQ(r->size(), 5);
  EXPECT_EQ(r->class_names(), (std::vector<std::string>{"0", "1"}));
  for (std::int64_t i = 0; i < 5; ++i) {
    Sample got = r->read(i);
    if (i != 1) EXPECT_TRUE(torch::equal(got.image, samples[i].image)) << i;  // PNG written for pixel-only samples
    EXPECT_EQ(got.label, samples[i].label);
    EXPECT_EQ(got.label_name, std::to_string(samples[i].label));
    EXPECT_EQ(got.name, std::to_string(i + 1) + (i == 1 ? ".jpg" : ".png"));  // record keys: names are not stored
  }
  EXPECT_EQ(r->read(1).encoded, samples[1].encoded);
}

TEST(RecordIO, SplitsAndRejoinsRecordsHoldingTheMagic) {
  // A JPEG comment segment carrying the magic at every alignment: dmlc-core splits the
  // record at the aligned one; the reader must re-insert it.
  std::string jpeg = jpeg_of(test_image(1));
  std::string comment = "\xFF\xFE";
  std::string body;
  for (int i = 0; i < 4; ++i) body += std::string(static_cast<std::size_t>(i), 'x') + "\x0a\x23\xd7\xce";
  comment += static_cast<char>(((body.size() + 2) >> 8) & 0xFF);
  comment += static_cast<char>((body.size() + 2) & 0xFF);
  jpeg.insert(2, comment + body);
  const std::string prefix = temp_dir("rec-split") + "/train";
  auto w = make_writer("recordio");
  w->open(prefix);
  Sample s;
  s.encoded = jpeg;
  s.label = 0;
  s.name = "a.jpg";
  w->write(s);
  w->commit();
  const std::string idx = file_bytes(prefix + ".idx");
  const auto offset = std::stoull(idx.substr(idx.find("\n1\t") + 3));
  EXPECT_EQ(raw_record(prefix + ".rec", offset).cflag, 1u) << "the record was not split";
  auto r = open_reader("recordio", prefix);
  EXPECT_EQ(r->read(0).encoded, jpeg);
}

TEST(RecordIO, BadMagicAndMissingIndexAreReported) {
  const std::string prefix = temp_dir("rec-bad") + "/train";
  auto w = make_writer("recordio");
  w->open(prefix);
  for (const auto& s : test_samples(3, 1)) w->write(s);
  w->commit();
  const std::string idx = file_bytes(prefix + ".idx");
  const auto offset = std::stoull(idx.substr(idx.find("\n2\t") + 3));
  corrupt_byte(prefix + ".rec", offset);
  auto r = open_reader("recordio", prefix);
  EXPECT_NO_THROW(r->read(0));
  const std::string m = error_of([&] { r->read(1); });
  EXPECT_THAT(m, ::testing::HasSubstr(prefix + ".rec"));
  EXPECT_THAT(m, ::testing::HasSubstr("bad magic"));
  EXPECT_THAT(m, ::testing::HasSubstr("byte offset " + std::to_string(offset)));

  fs::remove(prefix + ".idx");
  const std::string m2 = error_of([&] { open_reader("recordio", prefix); });
  EXPECT_THAT(m2, ::testing::HasSubstr(prefix + ".idx"));
  EXPECT_THAT(m2, ::testing::HasSubstr("index file not found"));
}

TEST(RecordIO, RefusesIdentitiesThatAreNotContiguous) {
  auto samples = test_samples(3, 3);
  std::swap(samples[1].label, samples[2].label);
  samples[0].label = 1;  // 1, 2, 1
  auto w = make_writer("recordio");
  w->open(temp_dir("rec-order") + "/train");
  w->write(samples[0]);
  w->write(samples[1]);
  EXPECT_THAT(error_of([&] { w->write(samples[2]); }), ::testing::HasSubstr("images of identity 1 are not consecutive"));
}

TEST(ImageFolder, UnreadableImageIsNamed) {
  const std::string root = temp_dir("if-bad") + "/faces";
  fs::create_directories(root + "/a");
  put_bytes(root + "/a/broken.jpg", "this is not a JPEG");
  auto r = open_reader("image-folder", root);
  const std::string m = error_of([&] { r->read(0); });
  EXPECT_THAT(m, ::testing::HasSubstr(root + "/a/broken.jpg"));
  EXPECT_THAT(m, ::testing::HasSubstr("cannot decode the image"));
}

TEST(Conversion, ImageFolderToTFRecordToRecordIOToImageFolderKeepsBytes) {
  const std::string dir = temp_dir("chain");
  auto samples = test_samples(6, 3, ".jpg");
  for (auto& s : samples) s.encoded = jpeg_of(s.image);
  auto copy = [](DatasetReader& from, DatasetWriter& to) {
    for (std::int64_t i = 0; i < from.size(); ++i) to.write(from.read(i));
    to.commit();
  };
  auto w = make_writer("image-folder");
  w->open(dir + "/a");
  for (const auto& s : samples) w->write(s);
  w->commit();
  auto tfr = make_writer("tfrecord");
  tfr->open(dir + "/b/set");
  copy(*open_reader("image-folder", dir + "/a"), *tfr);
  auto rec = make_writer("recordio");
  rec->open(dir + "/c/train");
  copy(*open_reader("tfrecord", dir + "/b/set"), *rec);
  auto back = make_writer("image-folder");
  back->open(dir + "/d");
  copy(*open_reader("recordio", dir + "/c/train"), *back);
  auto r = open_reader("image-folder", dir + "/d");
  ASSERT_EQ(r->size(), 6);
  EXPECT_EQ(r->class_names(), (std::vector<std::string>{"0", "1", "2"}));  // recordio keeps label numbers
  for (std::int64_t i = 0; i < 6; ++i) {
    Sample got = r->read(i);
    EXPECT_EQ(got.encoded, samples[i].encoded) << i;
    EXPECT_EQ(got.label, samples[i].label);
  }
}

}  // namespace
}  // namespace admis::test::datasets
