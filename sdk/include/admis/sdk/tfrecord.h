#pragma once
// TFRecord framing, shared by the TFRecord dataset plugin and TensorBoard event files:
//   u64 LE length | u32 masked CRC32C(length bytes) | payload | u32 masked CRC32C(payload)
// Header-only so that third-party dataset plugins can use it too.

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace admis::tfrecord {

constexpr std::size_t kHeaderSize = 12;  // length and its CRC
constexpr std::size_t kFooterSize = 4;   // the payload's CRC

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), table-driven.
inline std::uint32_t crc32c(const void* data, std::size_t size) {
  static const std::array<std::uint32_t, 256> table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  const auto* p = static_cast<const unsigned char*>(data);
  std::uint32_t c = 0xFFFFFFFFu;
  for (std::size_t i = 0; i < size; ++i) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

// TFRecord stores CRCs rotated and offset so that CRCs of CRC-bearing data stay robust.
inline std::uint32_t masked_crc32c(const void* data, std::size_t size) {
  const std::uint32_t c = crc32c(data, size);
  return ((c >> 15) | (c << 17)) + 0xA282EAD8u;
}

inline std::uint64_t load_le(const char* p, int bytes) {
  std::uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

inline void store_le(char* p, std::uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) p[i] = static_cast<char>((v >> (8 * i)) & 0xFF);
}

// The whole framed record for `payload`.
inline std::string frame(const std::string& payload) {
  std::string record(kHeaderSize + payload.size() + kFooterSize, '\0');
  store_le(&record[0], payload.size(), 8);
  store_le(&record[8], masked_crc32c(record.data(), 8), 4);
  record.replace(kHeaderSize, payload.size(), payload);
  store_le(&record[kHeaderSize + payload.size()], masked_crc32c(payload.data(), payload.size()), 4);
  return record;
}

// The payload length from a 12-byte header; false when the header's CRC does not match.
inline bool read_header(const char* header, std::uint64_t& length) {
  length = load_le(header, 8);
  return load_le(header + 8, 4) == masked_crc32c(header, 8);
}

// Whether `footer` (the 4 bytes after the payload) matches the payload.
inline bool payload_intact(const char* payload, std::size_t length, const char* footer) {
  return load_le(footer, 4) == masked_crc32c(payload, length);
}

}  // namespace admis::tfrecord
