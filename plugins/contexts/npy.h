#pragma once
// NumPy .npy files (format versions 1.0, 2.0 and 3.0), as np.save writes them: the magic
// "\x93NUMPY", a version, a little-endian header length (u16 for 1.0, u32 after), a
// Python dict literal {'descr': ..., 'fortran_order': ..., 'shape': (...), } padded with
// spaces to a multiple of 64 bytes and ended by '\n', then the raw array data.
//
// ADMIS keeps its context embeddings as such a file (elasticface_embeddings.npy, float32
// [N,512]); the context sources read them and write their own.

#include <cstdint>
#include <string>
#include <vector>

#include "admis/sdk.h"

namespace admis::contexts {

// The header of a .npy file.
struct NpyHeader {
  int major_version = 1;
  int minor_version = 0;
  std::string descr;  // e.g. "<f4"
  bool fortran_order = false;
  std::vector<std::int64_t> shape;
  std::size_t data_offset = 0;  // byte offset of the array data in the file
};

// Reads and checks the header only. Throws admis::Error naming `path` when the file is not
// a .npy file or its header cannot be parsed.
NpyHeader read_npy_header(const std::string& path);

// Reads a little-endian float array ('<f4' or '<f8', C or Fortran order, any rank) into a
// contiguous row-major tensor of the same dtype and shape. Other dtypes (integers,
// big-endian, ...) are refused with an admis::Error naming the file and the dtype.
torch::Tensor read_npy(const std::string& path);

// Writes `array` (float32, float64 or uint8, any rank, taken in row-major order) as a
// version 1.0 .npy file. The file appears atomically: it is written to a temporary file
// in the same folder, flushed, then renamed over `path`.
void write_npy(const std::string& path, const torch::Tensor& array);

}  // namespace admis::contexts
