// TensorBoard event files: CRC32C, TFRecord framing, Event / Summary encoding.
#include <cstring>
#include <fstream>

#include "admis/host/event_writer.h"
#include "admis/sdk/tfrecord.h"
#include "support/support.h"

using namespace admis;
using namespace admis::host;
using admis::tfrecord::crc32c;

TEST(Crc32c, KnownVectors) {
  // RFC 3720 check value and the all-zero vector.
  EXPECT_EQ(crc32c("123456789", 9), 0xe3069283u);
  const std::string zeros(32, '\0');
  EXPECT_EQ(crc32c(zeros.data(), zeros.size()), 0x8a9136aau);
}

TEST(EventWriter, WritesDecodableScalarEvents) {
  const std::string dir = test::temp_dir("events");
  std::string path;
  {
    EventWriter w(dir);
    path = w.path();
    w.add_scalar("train/loss", 2.5f, 10, 1000.25);
    w.add_scalar("train/top1", 0.75f, 20, 1001.5);
    w.add_scalar("train/lr", 1e-4f, 300000000000LL, 1002.0);
  }
  EXPECT_THAT(path, ::testing::HasSubstr("events.out.tfevents."));
  const auto events = read_event_file(path);
  ASSERT_EQ(events.size(), 4u);
  EXPECT_EQ(events[0].file_version, "brain.Event:2");
  EXPECT_TRUE(events[0].values.empty());
  EXPECT_GT(events[0].wall_time, 1.5e9);
  EXPECT_EQ(events[1].step, 10);
  EXPECT_DOUBLE_EQ(events[1].wall_time, 1000.25);
  ASSERT_EQ(events[1].values.size(), 1u);
  EXPECT_EQ(events[1].values[0].first, "train/loss");
  EXPECT_EQ(events[1].values[0].second, 2.5f);
  EXPECT_EQ(events[2].values[0].first, "train/top1");
  EXPECT_EQ(events[2].values[0].second, 0.75f);
  EXPECT_EQ(events[3].step, 300000000000LL);
  EXPECT_EQ(events[3].values[0].second, 1e-4f);
}

TEST(EventWriter, FirstRecordBytesAreTFRecordFramedWithMaskedCrcs) {
  const std::string dir = test::temp_dir("events_bytes");
  std::string path;
  { path = EventWriter(dir).path(); }
  std::ifstream in(path, std::ios::binary);
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GE(data.size(), 16u);
  std::uint64_t length;
  std::memcpy(&length, data.data(), 8);
  // wall_time (9 bytes: key 0x09 + double) + file_version (key 0x1a, length, 13 bytes).
  EXPECT_EQ(length, 9u + 2u + 13u);
  EXPECT_EQ(data.size(), 16 + length);
  EXPECT_EQ(static_cast<unsigned char>(data[12]), 0x09);
  EXPECT_EQ(data.substr(12 + 9, 2), std::string("\x1a\x0d", 2));
  EXPECT_EQ(data.substr(12 + 11, 13), "brain.Event:2");
  std::uint32_t crc;
  std::memcpy(&crc, data.data() + 8, 4);
  const std::uint32_t raw = crc32c(data.data(), 8);
  EXPECT_EQ(crc, ((raw >> 15) | (raw << 17)) + 0xa282ead8u);
}

TEST(EventWriter, CorruptionIsReportedWithTheRecord) {
  const std::string dir = test::temp_dir("events_bad");
  std::string path;
  {
    EventWriter w(dir);
    path = w.path();
    w.add_scalar("x", 1.0f, 1);
  }
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(-6, std::ios::end);  // inside the second record's payload
  f.put('\x7f');
  f.close();
  const std::string message = test::error_of([&] { read_event_file(path); });
  EXPECT_THAT(message, ::testing::HasSubstr("record 1"));
  EXPECT_THAT(message, ::testing::HasSubstr("data CRC mismatch"));
}
