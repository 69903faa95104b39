#pragma once
// TensorBoard scalar logs: an events.out.tfevents.<time>.<host> file of TFRecord records
// (admis/sdk/tfrecord.h: length, masked CRC32C of the length, payload, masked CRC32C), each
// payload an Event protobuf encoded by hand with TensorFlow's field numbers
// (tensorflow/core/util/event.proto, summary.proto). The first record carries
// file_version "brain.Event:2". The file is an append-only log, as TensorBoard's own are;
// every record is flushed when written.

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace admis::host {

class EventWriter {
 public:
  // Creates <folder>/events.out.tfevents.<unix seconds>.<host name>.
  explicit EventWriter(const std::string& folder);
  const std::string& path() const { return path_; }
  void add_scalar(const std::string& tag, float value, std::int64_t step, double wall_time = -1);

 private:
  void write_record(const std::string& payload);
  std::string path_;
  std::ofstream out_;
};

// A decoded event, for tests and tools.
struct ScalarEvent {
  double wall_time = 0;
  std::int64_t step = 0;
  std::string file_version;  // set on the first event only
  std::vector<std::pair<std::string, float>> values;
};
// Reads an event file, checking both CRCs of every record; throws admis::Error naming the
// file and the record on a bad length, CRC or protobuf.
std::vector<ScalarEvent> read_event_file(const std::string& path);

}  // namespace admis::host
