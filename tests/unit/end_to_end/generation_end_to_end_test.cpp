// The generative half end to end, through `admis run` as a user runs it: a small labelled
// image set with one identity embedding per image -> `train_generator` (a small idiff-unet in
// pixel space, context dropout 0.25) -> `sample` (contexts with their faces from an .npy,
// DDIM, id-oversample, TFRecord output). Checks that the loss falls, that the outputs are
// where the README says, and that a second run keeps both finished stages.
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <filesystem>
#include <fstream>

#include "support/support.h"

using namespace admis;
namespace fs = std::filesystem;

namespace {

// NumPy format 1.0, little-endian float32, C order.
void write_npy(const std::string& path, const torch::Tensor& matrix) {
  const torch::Tensor m = matrix.to(torch::kFloat32).contiguous();
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(m.size(0)) + ", " +
                       std::to_string(m.size(1)) + "), }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  out << "\x93NUMPY" << '\x01' << '\x00';
  const auto n = static_cast<std::uint16_t>(header.size());
  out.put(static_cast<char>(n & 0xff)).put(static_cast<char>(n >> 8));
  out << header;
  out.write(static_cast<const char*>(m.data_ptr()), static_cast<std::streamsize>(m.numel() * 4));
}

// Identity `id`: a coloured disc on a background, both colours from the identity; images
// vary the disc's position.
cv::Mat face(int id, int variant) {
  cv::Mat img(32, 32, CV_8UC3, cv::Scalar(40 + 35 * (id % 5), 90 + 25 * (id % 3), 200 - 30 * (id % 4)));
  cv::circle(img, cv::Point(12 + (variant % 3) * 4, 12 + (variant / 3) * 4), 7,
             cv::Scalar(255 - 40 * id, 60 + 30 * id, 120), -1, cv::LINE_AA);
  return img;
}

std::string read_file(const fs::path& p) { return test::read_text(p.string()); }

}  // namespace

TEST(GenerationEndToEnd, TrainGeneratorThenSampleAnOversampledTfrecordSet) {
  const fs::path root = test::temp_dir("generation_e2e");
  constexpr int kIdentities = 6, kImages = 6;
  std::ofstream names(root / "names.txt");
  auto generator = at::make_generator<at::CPUGeneratorImpl>(11);
  const torch::Tensor identity_codes = at::randn({kIdentities, 16}, generator, torch::TensorOptions(torch::kFloat32));
  std::vector<torch::Tensor> rows;
  for (int id = 0; id < kIdentities; ++id) {
    fs::create_directories(root / "faces" / std::to_string(id));
    for (int k = 0; k < kImages; ++k) {
      cv::imwrite((root / "faces" / std::to_string(id) / (std::to_string(k) + ".png")).string(), face(id, k));
      names << id << "/" << k << ".png\n";
      rows.push_back(identity_codes[id]);
    }
  }
  names.close();
  write_npy((root / "contexts.npy").string(), torch::stack(rows));
  // The sampling contexts: four identities with the face each came from.
  fs::create_directories(root / "context_faces");
  for (int i = 0; i < 4; ++i) cv::imwrite((root / "context_faces" / (std::to_string(i) + ".png")).string(), face(i, 4));
  write_npy((root / "sample_contexts.npy").string(), identity_codes.slice(0, 0, 4));

  const std::string unet = R"({plugin: idiff-unet, params: {initial_channels: 32, channel_multipliers: [1, 2], is_attention: [false, true], n_blocks_per_resolution: 1, context_input_channels: 16, context_channels: 32}})";
  std::ofstream(root / "generate.yaml") << R"(version: 1
output_dir: runs
seed: 0
stages:
  - name: generator
    stage: train_generator
    denoiser: )" << unet << R"(
    codec: {plugin: pixel}
    data: {plugin: image-folder}
    data_path: faces
    contexts: {plugin: npy, params: {path: contexts.npy, normalize: false}}
    image_names: names.txt
    image_size: 16
    steps: 200
    batch_size: 8
    lr: 0.0005
    t_0: 0
    sampler: {plugin: ddim-admis, params: {num_inference_steps: 10}}
    sample_every: 100
    preview_count: 2
    save_every: 100
    log_every: 20
    workers: 2
  - name: syn
    stage: sample
    denoiser: )" << unet.substr(0, unet.size() - 1) << R"(, weights: runs/generator/denoiser.safetensors}
    codec: {plugin: pixel}
    scheduler: {plugin: ddim-admis, params: {num_inference_steps: 10}}
    contexts: {plugin: npy, params: {path: sample_contexts.npy, normalize: false, images: context_faces}}
    images_per_identity: 4
    batch_size: 4
    generation_size: 16
    image_size: 16
    augmenters: ["id-oversample copies=2"]
    writer: {plugin: tfrecord}
    dataset_path: data/Syn
)";
  const auto run = test::run_command(test::admis_exe() + " --threads 2 run " + (root / "generate.yaml").string());
  ASSERT_EQ(run.status, 0) << run.output;
  EXPECT_THAT(run.output, ::testing::HasSubstr("[train_generator] step 200/200 loss"));

  // The loss fell: the last logged window against the first.
  std::ifstream csv(root / "runs/generator/metrics.csv");
  std::string line, first, last;
  std::getline(csv, line);
  while (std::getline(csv, line))
    if (!line.empty()) (first.empty() ? first : last) = line;
  auto loss = [](const std::string& row) { return std::stod(row.substr(row.find(',', row.find(',') + 1) + 1)); };
  std::cout << "generator loss " << loss(first) << " -> " << loss(last) << std::endl;
  EXPECT_LT(loss(last), 0.7 * loss(first));
  for (const char* f : {"runs/generator/denoiser.safetensors", "runs/generator/samples/sample_000100.png",
                        "runs/generator/samples/sample_000200.png", "runs/generator/checkpoints/ema_averaged_model_200.ckpt",
                        "runs/generator/checkpoints/optimization.ckpt", "runs/syn/preview.png", "data/Syn.index"})
    EXPECT_TRUE(fs::exists(root / f)) << f;

  // 4 identities x (4 samples + 2 copies of the context face), also as TFRecord.
  for (int i = 0; i < 4; ++i)
    for (int k = 0; k < 6; ++k) EXPECT_TRUE(fs::exists(root / "runs/syn/images" / std::to_string(i) / (std::to_string(k) + ".png")));
  const cv::Mat copy = cv::imread((root / "runs/syn/images/2/5.png").string());
  const cv::Mat context_face = cv::imread((root / "context_faces/2.png").string());
  EXPECT_EQ(cv::norm(copy, context_face, cv::NORM_INF), 0.0) << "id-oversample copies the context face";
  std::ifstream index(root / "data/Syn.index");
  int records = 0;
  while (std::getline(index, line)) records += line.empty() ? 0 : 1;
  EXPECT_EQ(records, 24);

  // Running again keeps both finished stages and their outputs.
  const std::string before = read_file(root / "runs/syn/images/1/0.png");
  const auto again = test::run_command(test::admis_exe() + " --threads 2 run " + (root / "generate.yaml").string());
  ASSERT_EQ(again.status, 0) << again.output;
  EXPECT_THAT(again.output, ::testing::Not(::testing::HasSubstr("[train_generator] step")));
  EXPECT_EQ(read_file(root / "runs/syn/images/1/0.png"), before);

  // A shard of the same run finds its identities complete and leaves the set alone.
  const auto shard = test::run_command(test::admis_exe() + " --threads 2 run " + (root / "generate.yaml").string() +
                                       " --shard 1/2");
  ASSERT_EQ(shard.status, 0) << shard.output;
  EXPECT_THAT(shard.output, ::testing::HasSubstr("shard 1/2: 2 identities (0 sampled, 2 already complete)"));
  EXPECT_EQ(read_file(root / "runs/syn/images/1/0.png"), before);
}
