#include "dataset_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

namespace admis::datasets {

namespace fs = std::filesystem;

ImageFormat sniff_format(const std::string& b) {
  if (b.size() >= 3 && static_cast<unsigned char>(b[0]) == 0xFF && static_cast<unsigned char>(b[1]) == 0xD8 &&
      static_cast<unsigned char>(b[2]) == 0xFF)
    return ImageFormat::Jpeg;
  if (b.size() >= 8 && b.compare(0, 8, "\x89PNG\r\n\x1a\n") == 0) return ImageFormat::Png;
  return ImageFormat::Unknown;
}

ImageFormat format_of_name(const std::string& file_name) {
  std::string ext = fs::path(file_name).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  if (ext == ".jpg" || ext == ".jpeg") return ImageFormat::Jpeg;
  if (ext == ".png") return ImageFormat::Png;
  return ImageFormat::Unknown;
}

const char* extension_of(ImageFormat format) {
  switch (format) {
    case ImageFormat::Jpeg: return ".jpg";
    case ImageFormat::Png: return ".png";
    case ImageFormat::Unknown: break;
  }
  return "";
}

torch::Tensor decode_image(const std::string& bytes, const std::string& where) {
  if (bytes.empty()) throw Error(where, "cannot decode the image: the file is empty");
  cv::Mat raw(1, static_cast<int>(bytes.size()), CV_8UC1, const_cast<char*>(bytes.data()));
  cv::Mat bgr;
  try {
    bgr = cv::imdecode(raw, cv::IMREAD_COLOR);
  } catch (const cv::Exception& e) {
    throw Error(where, cat("cannot decode the image: ", e.what()));
  }
  if (bgr.empty()) throw Error(where, "cannot decode the image: not a readable JPEG or PNG file");
  auto image = torch::empty({bgr.rows, bgr.cols, 3}, torch::kUInt8);
  cv::Mat rgb(bgr.rows, bgr.cols, CV_8UC3, image.data_ptr<std::uint8_t>());
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  return image;
}

namespace {
torch::Tensor checked_image(const torch::Tensor& image, const std::string& where) {
  if (!image.defined()) throw Error(where, "the sample has neither an image nor an encoded file");
  if (image.dim() != 3 || image.size(2) != 3 || image.scalar_type() != torch::kUInt8)
    throw Error(where, cat("expected an image [H,W,3] uint8 RGB, got ", image.sizes(), " ", image.dtype()));
  return image.to(torch::kCPU).contiguous();
}
}  // namespace

std::string encode_image(const torch::Tensor& image_in, ImageFormat format, int jpeg_quality, const std::string& where) {
  const torch::Tensor image = checked_image(image_in, where);
  cv::Mat rgb(static_cast<int>(image.size(0)), static_cast<int>(image.size(1)), CV_8UC3,
              const_cast<std::uint8_t*>(image.data_ptr<std::uint8_t>()));
  cv::Mat bgr;
  cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
  std::vector<uchar> out;
  bool ok = false;
  if (format == ImageFormat::Jpeg) ok = cv::imencode(".jpg", bgr, out, {cv::IMWRITE_JPEG_QUALITY, jpeg_quality});
  else if (format == ImageFormat::Png) ok = cv::imencode(".png", bgr, out);
  else throw Error(where, "cannot encode: unknown image format (use a .jpg, .jpeg or .png name)");
  if (!ok) throw Error(where, "image encoding failed");
  return std::string(out.begin(), out.end());
}

torch::Tensor pixels_of(const Sample& sample, const std::string& where) {
  if (sample.image.defined()) return checked_image(sample.image, where);
  if (!sample.encoded.empty()) return decode_image(sample.encoded, where);
  throw Error(where, "the sample has neither an image nor an encoded file");
}

std::string file_bytes_of(const Sample& sample, ImageFormat format, int jpeg_quality, const std::string& where) {
  if (!sample.encoded.empty() && sniff_format(sample.encoded) == format) return sample.encoded;
  return encode_image(pixels_of(sample, where), format, jpeg_quality, where);
}

std::string identity_of(const Sample& sample) {
  return sample.label_name.empty() && sample.label >= 0 ? std::to_string(sample.label) : sample.label_name;
}

std::string sample_where(const Sample& sample) { return cat(identity_of(sample), "/", sample.name); }

std::string read_whole_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path, cat("cannot open the file: ", std::strerror(errno)));
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw Error(path, "read error");
  return data;
}

RandomAccessFile::RandomAccessFile(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw Error(path, cat("cannot open the file: ", std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd_, &st) != 0) {
    ::close(fd_);
    throw Error(path, cat("cannot stat the file: ", std::strerror(errno)));
  }
  size_ = static_cast<std::uint64_t>(st.st_size);
}

RandomAccessFile::~RandomAccessFile() {
  if (fd_ >= 0) ::close(fd_);
}

std::size_t RandomAccessFile::read_at(std::uint64_t offset, char* out, std::size_t size) const {
  std::size_t done = 0;
  while (done < size) {
    const ssize_t n = ::pread(fd_, out + done, size - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw Error(path_, cat("read error at byte offset ", offset + done, ": ", std::strerror(errno)));
    }
    if (n == 0) break;
    done += static_cast<std::size_t>(n);
  }
  return done;
}

std::string temp_name_for(const std::string& path) {
  static const char* digits = "0123456789abcdef";
  std::random_device device;
  std::mt19937_64 rng((static_cast<std::uint64_t>(device()) << 32) ^ device() ^ static_cast<std::uint64_t>(::getpid()));
  std::string suffix;
  for (int i = 0; i < 12; ++i) suffix += digits[rng() % 16];
  return path + ".tmp-" + suffix;
}

}  // namespace admis::datasets
