#pragma once
// Shared by the dataset plugins: image decoding and encoding (OpenCV), file reading,
// positional reads for thread-safe record access, and temporary-file naming for writes
// that become visible only on commit.

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "admis/sdk.h"

namespace admis::datasets {

// Concatenates anything streamable: cat("record at byte offset ", 42).
template <class... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

enum class ImageFormat { Unknown, Jpeg, Png };

ImageFormat sniff_format(const std::string& bytes);       // from the file's magic bytes
ImageFormat format_of_name(const std::string& file_name);  // from the extension
const char* extension_of(ImageFormat format);              // ".jpg", ".png"

// Encoded file -> [H,W,3] uint8 RGB; `where` names the file (or record) in the error.
torch::Tensor decode_image(const std::string& bytes, const std::string& where);
// [H,W,3] uint8 RGB -> JPEG (quality 1..100) or PNG bytes.
std::string encode_image(const torch::Tensor& image, ImageFormat format, int jpeg_quality, const std::string& where);
// The sample's pixels: its image, or its encoded file decoded.
torch::Tensor pixels_of(const Sample& sample, const std::string& where);
// The sample as a file of `format`: its encoded bytes when they already are that format
// (no re-encoding, no quality loss), else its pixels encoded.
std::string file_bytes_of(const Sample& sample, ImageFormat format, int jpeg_quality, const std::string& where);
// The identity folder name: label_name, or the label number when the sample has none.
std::string identity_of(const Sample& sample);
// Where a sample is in error messages: "identity/name".
std::string sample_where(const Sample& sample);

std::string read_whole_file(const std::string& path);

// A read-only file for positional reads from several threads at once.
class RandomAccessFile {
 public:
  explicit RandomAccessFile(const std::string& path);  // throws Error(path, ...) when unreadable
  ~RandomAccessFile();
  RandomAccessFile(const RandomAccessFile&) = delete;
  RandomAccessFile& operator=(const RandomAccessFile&) = delete;
  // Reads up to `size` bytes at `offset`; returns how many were read (fewer at the end).
  std::size_t read_at(std::uint64_t offset, char* out, std::size_t size) const;
  std::uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
  std::uint64_t size_ = 0;
};

// A sibling name for a file or folder being written: "<path>.tmp-<random>".
std::string temp_name_for(const std::string& path);

}  // namespace admis::datasets
