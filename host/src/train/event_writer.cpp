// TensorBoard event files by hand: TFRecord framing and the few Event / Summary protobuf
// fields a scalar needs (TensorFlow's event.proto and summary.proto field numbers).
#include "admis/host/event_writer.h"

#include <boost/filesystem.hpp>
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

#include "admis/sdk/error.h"
#include "admis/sdk/tfrecord.h"

namespace admis::host {

namespace {

// Protobuf wire format: varint keys (field << 3 | wire type), length-delimited strings
// and messages (type 2), fixed64 doubles (type 1), fixed32 floats (type 5).
void put_varint(std::string& out, std::uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
void put_key(std::string& out, int field, int wire_type) { put_varint(out, (static_cast<std::uint64_t>(field) << 3) | wire_type); }
void put_bytes(std::string& out, int field, const std::string& bytes) {
  put_key(out, field, 2);
  put_varint(out, bytes.size());
  out += bytes;
}
template <class T>
void put_fixed(std::string& out, int field, T value) {
  put_key(out, field, sizeof(T) == 8 ? 1 : 5);
  char raw[sizeof(T)];
  std::memcpy(raw, &value, sizeof(T));  // little-endian hosts only, as x86-64 and aarch64 are
  out.append(raw, sizeof(T));
}

// Event fields: wall_time = 1 (double), step = 2 (int64), file_version = 3 (string),
// summary = 5 (Summary). Summary: value = 1 (repeated Value). Value: tag = 1 (string),
// simple_value = 2 (float).
std::string event_bytes(double wall_time, std::int64_t step, const std::string* file_version,
                        const std::string* tag, float value) {
  std::string e;
  put_fixed(e, 1, wall_time);
  if (step != 0) {
    put_key(e, 2, 0);
    put_varint(e, static_cast<std::uint64_t>(step));
  }
  if (file_version) put_bytes(e, 3, *file_version);
  if (tag) {
    std::string v;
    put_bytes(v, 1, *tag);
    put_fixed(v, 2, value);
    std::string summary;
    put_bytes(summary, 1, v);
    put_bytes(e, 5, summary);
  }
  return e;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// A protobuf reader over one message, enough for the fields above.
struct WireReader {
  const std::string& data;
  std::size_t pos = 0;
  const std::string& where;
  bool done() const { return pos >= data.size(); }
  std::uint64_t varint() {
    std::uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos >= data.size()) throw Error(where, "truncated varint");
      const auto byte = static_cast<unsigned char>(data[pos++]);
      v |= static_cast<std::uint64_t>(byte & 0x7f) << shift;
      if (!(byte & 0x80)) return v;
    }
    throw Error(where, "varint longer than 10 bytes");
  }
  std::string bytes(std::size_t n) {
    if (pos + n > data.size()) throw Error(where, "truncated field");
    std::string s = data.substr(pos, n);
    pos += n;
    return s;
  }
  void skip(int wire_type) {
    switch (wire_type) {
      case 0: varint(); break;
      case 1: bytes(8); break;
      case 2: bytes(varint()); break;
      case 5: bytes(4); break;
      default: throw Error(where, fmt::format("unsupported wire type {}", wire_type));
    }
  }
};

template <class T>
T from_raw(const std::string& raw) {
  T v;
  std::memcpy(&v, raw.data(), sizeof(T));
  return v;
}

}  // namespace

EventWriter::EventWriter(const std::string& folder) {
  boost::filesystem::create_directories(folder);
  char host[256] = "localhost";
  gethostname(host, sizeof(host) - 1);
  host[sizeof(host) - 1] = '\0';
  const auto seconds = static_cast<long long>(now_seconds());
  path_ = (boost::filesystem::path(folder) / fmt::format("events.out.tfevents.{}.{}", seconds, host)).string();
  // A second writer in the same second (a resumed run) gets its own file.
  for (int k = 1; boost::filesystem::exists(path_); ++k)
    path_ = (boost::filesystem::path(folder) / fmt::format("events.out.tfevents.{}.{}.{}", seconds, host, k)).string();
  out_.open(path_, std::ios::binary);
  if (!out_) throw Error(path_, "cannot create the TensorBoard event file");
  const std::string version = "brain.Event:2";
  write_record(event_bytes(now_seconds(), 0, &version, nullptr, 0));
}

void EventWriter::add_scalar(const std::string& tag, float value, std::int64_t step, double wall_time) {
  write_record(event_bytes(wall_time < 0 ? now_seconds() : wall_time, step, nullptr, &tag, value));
}

void EventWriter::write_record(const std::string& payload) {
  const std::string record = tfrecord::frame(payload);
  out_.write(record.data(), static_cast<std::streamsize>(record.size()));
  out_.flush();
  if (!out_) throw Error(path_, "writing the TensorBoard event file failed");
}

std::vector<ScalarEvent> read_event_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path, "cannot open the event file");
  const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<ScalarEvent> events;
  std::size_t pos = 0;
  while (pos < data.size()) {
    const std::string where = fmt::format("{}: record {}", path, events.size());
    if (pos + 12 > data.size()) throw Error(where, "truncated record header");
    std::uint64_t length = 0;
    if (!tfrecord::read_header(data.data() + pos, length)) throw Error(where, "length CRC mismatch");
    if (length > data.size() - pos - 16) throw Error(where, "truncated record");
    const std::string payload = data.substr(pos + 12, length);
    if (!tfrecord::payload_intact(payload.data(), payload.size(), data.data() + pos + 12 + length))
      throw Error(where, "data CRC mismatch");
    pos += 16 + length;

    ScalarEvent event;
    WireReader r{payload, 0, where};
    while (!r.done()) {
      const std::uint64_t key = r.varint();
      const int field = static_cast<int>(key >> 3), type = static_cast<int>(key & 7);
      if (field == 1 && type == 1) event.wall_time = from_raw<double>(r.bytes(8));
      else if (field == 2 && type == 0) event.step = static_cast<std::int64_t>(r.varint());
      else if (field == 3 && type == 2) event.file_version = r.bytes(r.varint());
      else if (field == 5 && type == 2) {
        const std::string summary = r.bytes(r.varint());
        WireReader s{summary, 0, where};
        while (!s.done()) {
          const std::uint64_t skey = s.varint();
          if (skey != ((1 << 3) | 2)) {
            s.skip(static_cast<int>(skey & 7));
            continue;
          }
          const std::string value = s.bytes(s.varint());
          WireReader v{value, 0, where};
          std::pair<std::string, float> tv{"", 0.0f};
          while (!v.done()) {
            const std::uint64_t vkey = v.varint();
            if (vkey == ((1 << 3) | 2)) tv.first = v.bytes(v.varint());
            else if (vkey == ((2 << 3) | 5)) tv.second = from_raw<float>(v.bytes(4));
            else v.skip(static_cast<int>(vkey & 7));
          }
          event.values.push_back(tv);
        }
      } else {
        r.skip(type);
      }
    }
    events.push_back(std::move(event));
  }
  return events;
}

}  // namespace admis::host
