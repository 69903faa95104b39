// TFace's MobileFaceNet (torchkit/backbone/model_mobilefacenet.py, after cavaface): a
// stride-2 stem, inverted-residual depthwise blocks (1x1 expand - 3x3 depthwise - linear
// 1x1 projection) and a 1x1 conv to 512 channels at 7x7, then either GDC (a 7x7 depthwise
// "global" convolution, a bias-free Linear and BatchNorm1d without affine) or GNAP
// (norm-aware average pooling to 512). Module names follow TFace (conv1, conv2_dw, conv_23,
// conv_3.model.N, ..., conv_6_sep, output_layer.*).

#include "backbone_base.h"

namespace admis::backbones {

namespace {

// Conv_block: conv - BN - PReLU.
class ConvBlockImpl : public torch::nn::Module {
 public:
  ConvBlockImpl(std::int64_t in_c, std::int64_t out_c, std::int64_t kernel, std::int64_t stride, std::int64_t padding,
                std::int64_t groups = 1)
      : torch::nn::Module("Conv_block") {
    conv = register_module("conv", conv_no_bias(in_c, out_c, kernel, stride, padding, groups));
    bn = register_module("bn", admis::BatchNorm2d(out_c));
    prelu = register_module("prelu", torch::nn::PReLU(torch::nn::PReLUOptions().num_parameters(out_c)));
  }
  torch::Tensor forward(const torch::Tensor& x) { return prelu(bn(conv(x))); }

  torch::nn::Conv2d conv{nullptr};
  admis::BatchNorm2d bn{nullptr};
  torch::nn::PReLU prelu{nullptr};
};
TORCH_MODULE(ConvBlock);

// LinearBlock: conv - BN, no activation.
class LinearBlockImpl : public torch::nn::Module {
 public:
  LinearBlockImpl(std::int64_t in_c, std::int64_t out_c, std::int64_t kernel, std::int64_t stride, std::int64_t padding,
                  std::int64_t groups = 1)
      : torch::nn::Module("LinearBlock") {
    conv = register_module("conv", conv_no_bias(in_c, out_c, kernel, stride, padding, groups));
    bn = register_module("bn", admis::BatchNorm2d(out_c));
  }
  torch::Tensor forward(const torch::Tensor& x) { return bn(conv(x)); }

  torch::nn::Conv2d conv{nullptr};
  admis::BatchNorm2d bn{nullptr};
};
TORCH_MODULE(LinearBlock);

// Depth_Wise: expand to `groups` channels, 3x3 depthwise (carrying the stride), project to
// out_c; with `residual` the input is added back.
class DepthWiseImpl : public torch::nn::Module {
 public:
  DepthWiseImpl(std::int64_t in_c, std::int64_t out_c, std::int64_t stride, std::int64_t groups, bool residual)
      : torch::nn::Module("Depth_Wise"), residual_(residual) {
    conv = register_module("conv", ConvBlock(in_c, groups, 1, 1, 0));
    conv_dw = register_module("conv_dw", ConvBlock(groups, groups, 3, stride, 1, groups));
    project = register_module("project", LinearBlock(groups, out_c, 1, 1, 0));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor out = project(conv_dw(conv(x)));
    return residual_ ? x + out : out;
  }

  ConvBlock conv{nullptr}, conv_dw{nullptr};
  LinearBlock project{nullptr};

 private:
  bool residual_;
};
TORCH_MODULE(DepthWise);

// Residual: `num_block` stride-1 residual Depth_Wise blocks in `model`.
torch::nn::Sequential residual_stage(std::int64_t channels, std::int64_t num_block, std::int64_t groups) {
  torch::nn::Sequential model;
  for (std::int64_t i = 0; i < num_block; ++i) model->push_back(DepthWise(channels, channels, 1, groups, true));
  return model;
}

// GDC: global depthwise 7x7 conv + BN, flatten, bias-free Linear, BatchNorm1d(affine=False).
class GdcImpl : public torch::nn::Module {
 public:
  GdcImpl(std::int64_t in_c, std::int64_t embedding_size) : torch::nn::Module("GDC") {
    conv_6_dw = register_module("conv_6_dw", LinearBlock(in_c, in_c, 7, 1, 0, in_c));
    linear = register_module("linear", torch::nn::Linear(torch::nn::LinearOptions(in_c, embedding_size).bias(false)));
    bn = register_module("bn", admis::BatchNorm1d(torch::nn::BatchNorm1dOptions(embedding_size).affine(false)));
  }
  torch::Tensor forward(const torch::Tensor& x) { return bn(linear(torch::flatten(conv_6_dw(x), 1))); }

  LinearBlock conv_6_dw{nullptr};
  torch::nn::Linear linear{nullptr};
  admis::BatchNorm1d bn{nullptr};
};
TORCH_MODULE(Gdc);

// GNAP: BN without affine, then every position rescaled by (mean feature norm over the
// whole batch and all positions) / (its own norm), average-pooled, and BN1d without
// affine. The mean is taken over the batch, as TFace does, so an image's embedding depends
// on the other images of its batch.
class GnapImpl : public torch::nn::Module {
 public:
  explicit GnapImpl(std::int64_t in_c) : torch::nn::Module("GNAP") {
    bn1 = register_module("bn1", admis::BatchNorm2d(torch::nn::BatchNorm2dOptions(in_c).affine(false)));
    bn2 = register_module("bn2", admis::BatchNorm1d(torch::nn::BatchNorm1dOptions(in_c).affine(false)));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    const torch::Tensor normalised = bn1(x);
    const torch::Tensor norms = normalised.norm(2, /*dim=*/1, /*keepdim=*/true);
    const torch::Tensor weighted = normalised * (norms.mean() / norms);
    return bn2(weighted.mean({2, 3}));
  }

  admis::BatchNorm2d bn1{nullptr};
  admis::BatchNorm1d bn2{nullptr};
};
TORCH_MODULE(Gnap);

class MobileFaceNetImpl : public torch::nn::Module {
 public:
  MobileFaceNetImpl(std::int64_t embedding_size, bool gnap) : torch::nn::Module("MobileFaceNet") {
    conv1 = register_module("conv1", ConvBlock(3, 64, 3, 2, 1));
    conv2_dw = register_module("conv2_dw", ConvBlock(64, 64, 3, 1, 1, 64));
    conv_23 = register_module("conv_23", DepthWise(64, 64, 2, 128, false));
    register_stage(conv_3, "conv_3", 64, 4, 128);
    conv_34 = register_module("conv_34", DepthWise(64, 128, 2, 256, false));
    register_stage(conv_4, "conv_4", 128, 6, 256);
    conv_45 = register_module("conv_45", DepthWise(128, 128, 2, 512, false));
    register_stage(conv_5, "conv_5", 128, 2, 256);
    conv_6_sep = register_module("conv_6_sep", ConvBlock(128, 512, 1, 1, 0));
    if (gnap) {
      gnap_ = register_module("output_layer", Gnap(512));
    } else {
      gdc_ = register_module("output_layer", Gdc(512, embedding_size));
    }
    initialize_tface_weights(*this);
  }

  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor out = conv_23(conv2_dw(conv1(x)));
    out = conv_3->forward(out);
    out = conv_4->forward(conv_34(out));
    out = conv_5->forward(conv_45(out));
    out = conv_6_sep(out);
    return gnap_ ? gnap_(out) : gdc_(out);
  }

  ConvBlock conv1{nullptr}, conv2_dw{nullptr}, conv_6_sep{nullptr};
  DepthWise conv_23{nullptr}, conv_34{nullptr}, conv_45{nullptr};
  torch::nn::Sequential conv_3{nullptr}, conv_4{nullptr}, conv_5{nullptr};

 private:
  // TFace's Residual module holds its blocks in `model`, hence the keys conv_3.model.N.*.
  void register_stage(torch::nn::Sequential& stage, const std::string& name, std::int64_t channels,
                      std::int64_t num_block, std::int64_t groups) {
    auto holder = std::make_shared<torch::nn::Module>("Residual");
    stage = residual_stage(channels, num_block, groups);
    holder->register_module("model", stage);
    register_module(name, holder);
  }

  Gdc gdc_{nullptr};
  Gnap gnap_{nullptr};
};
TORCH_MODULE(MobileFaceNet);

class MobileFaceNetBackbone final : public BackboneBase {
 public:
  explicit MobileFaceNetBackbone(const Params& p)
      : BackboneBase("mobilefacenet", p.get_int("input_size"), p.get_int("embedding_size")) {
    const bool gnap = p.get_string("output_name") == "GNAP";
    // TFace builds GNAP(512) whatever embedding_size says; refuse the silent mismatch.
    if (gnap && p.get_int("embedding_size") != 512)
      throw Error(name(),
                  "output_name 'GNAP' pools the 512 channels of conv_6_sep, so embedding_size must be 512, got " +
                      std::to_string(p.get_int("embedding_size")));
    net_ = MobileFaceNet(p.get_int("embedding_size"), gnap);
    set_module(net_.ptr());
  }

 protected:
  torch::Tensor embed(const torch::Tensor& images) override { return net_->forward(images); }

 private:
  MobileFaceNet net_{nullptr};
};

}  // namespace

void register_mobilefacenet(FactoryList& registry) {
  registry.add(
      Kind::Backbone, "mobilefacenet", "1.0.0",
      "TFace MobileFaceNet (model_mobilefacenet.py): 112 px faces -> embeddings, GDC or GNAP output",
      {input_size_param({"112"}, "TFace MobileFaceNet"),
       ParamSpec::Int("embedding_size", 512, "embedding size (GDC's linear output; GNAP needs 512)").at_least(1),
       ParamSpec::String("output_name", "GDC",
                         "output block: 'GDC' global depthwise conv + linear, 'GNAP' norm-aware pooling")
           .one_of({"GDC", "GNAP"})},
      [](const Params& p, Host&) -> std::unique_ptr<Plugin> { return std::make_unique<MobileFaceNetBackbone>(p); });
}

}  // namespace admis::backbones
