// TFace's IR and IR-SE ResNets (torchkit/backbone/model_irse.py, after face.evoLVe): a
// stride-1 3x3 stem, four stages of pre-activation residual units (BN - conv - BN - PReLU -
// conv - BN, the stride on the second convolution), and an output layer BN - Dropout(0.4) -
// flatten - Linear - BatchNorm1d(affine=False) giving a 512-d embedding. 18 to 100 layers
// use basic units and end with 512 channels; 152 and 200 use bottleneck units and end with
// 2048. Parameter and buffer names follow TFace's modules exactly (input_layer.*, body.N.*,
// output_layer.*), so its checkpoints load strictly.

#include <map>

#include "backbone_base.h"

namespace admis::backbones {

namespace {

using torch::indexing::None;
using torch::indexing::Slice;

admis::BatchNorm2d batch_norm(std::int64_t channels) { return admis::BatchNorm2d(channels); }
torch::nn::PReLU prelu(std::int64_t channels) {
  return torch::nn::PReLU(torch::nn::PReLUOptions().num_parameters(channels));
}

// One residual unit of the body: TFace's BasicBlockIR / BottleneckIR and their SE variants.
class IrUnitImpl : public torch::nn::Module {
 public:
  IrUnitImpl(std::int64_t in_channel, std::int64_t depth, std::int64_t stride, bool bottleneck, bool se)
      : torch::nn::Module(bottleneck ? (se ? "BottleneckIRSE" : "BottleneckIR")
                                     : (se ? "BasicBlockIRSE" : "BasicBlockIR")),
        stride_(stride) {
    // Equal widths: TFace's MaxPool2d(1, stride), i.e. every stride-th pixel (no state).
    // Otherwise a strided 1x1 projection.
    if (in_channel != depth) {
      shortcut_layer = register_module(
          "shortcut_layer", torch::nn::Sequential(conv_no_bias(in_channel, depth, 1, stride, 0), batch_norm(depth)));
    }
    res_layer = torch::nn::Sequential();
    if (!bottleneck) {
      res_layer->push_back(batch_norm(in_channel));
      res_layer->push_back(conv_no_bias(in_channel, depth, 3, 1, 1));
      res_layer->push_back(batch_norm(depth));
      res_layer->push_back(prelu(depth));
      res_layer->push_back(conv_no_bias(depth, depth, 3, stride, 1));
      res_layer->push_back(batch_norm(depth));
    } else {
      const std::int64_t reduced = depth / 4;
      res_layer->push_back(batch_norm(in_channel));
      res_layer->push_back(conv_no_bias(in_channel, reduced, 1, 1, 0));
      res_layer->push_back(batch_norm(reduced));
      res_layer->push_back(prelu(reduced));
      res_layer->push_back(conv_no_bias(reduced, reduced, 3, 1, 1));
      res_layer->push_back(batch_norm(reduced));
      res_layer->push_back(prelu(reduced));
      res_layer->push_back(conv_no_bias(reduced, depth, 1, stride, 0));
      res_layer->push_back(batch_norm(depth));
    }
    if (se) res_layer->push_back("se_block", SEModule(depth, 16));
    register_module("res_layer", res_layer);
  }

  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor shortcut =
        shortcut_layer
            ? shortcut_layer->forward(x)
            : (stride_ == 1 ? x : x.index({Slice(), Slice(), Slice(None, None, stride_), Slice(None, None, stride_)}));
    return res_layer->forward(x) + shortcut;
  }

  torch::nn::Sequential shortcut_layer{nullptr};
  torch::nn::Sequential res_layer{nullptr};

 private:
  std::int64_t stride_;
};
TORCH_MODULE(IrUnit);

struct Stage {
  std::int64_t in_channel, depth, units;
};

// TFace's get_blocks: the first unit of each stage halves the resolution.
const std::map<std::int64_t, std::vector<Stage>>& stages_by_depth() {
  static const std::map<std::int64_t, std::vector<Stage>> stages = {
      {18, {{64, 64, 2}, {64, 128, 2}, {128, 256, 2}, {256, 512, 2}}},
      {34, {{64, 64, 3}, {64, 128, 4}, {128, 256, 6}, {256, 512, 3}}},
      {50, {{64, 64, 3}, {64, 128, 4}, {128, 256, 14}, {256, 512, 3}}},
      {100, {{64, 64, 3}, {64, 128, 13}, {128, 256, 30}, {256, 512, 3}}},
      {152, {{64, 256, 3}, {256, 512, 8}, {512, 1024, 36}, {1024, 2048, 3}}},
      {200, {{64, 256, 3}, {256, 512, 24}, {512, 1024, 36}, {1024, 2048, 3}}},
  };
  return stages;
}

constexpr std::int64_t kEmbeddingSize = 512;

// TFace's Backbone(input_size, num_layers, mode).
class IrseNetImpl : public torch::nn::Module {
 public:
  IrseNetImpl(std::int64_t input_size, std::int64_t num_layers, bool se) : torch::nn::Module("Backbone") {
    const bool bottleneck = num_layers > 100;
    const std::int64_t output_channel = bottleneck ? 2048 : 512;
    const std::int64_t side = input_size / 16;  // four stride-2 stages: 7 for 112, 14 for 224

    // Registered in TFace's order (input_layer, output_layer, body), so that the state
    // dict lists its keys as the reference's does.
    input_layer =
        register_module("input_layer", torch::nn::Sequential(conv_no_bias(3, 64, 3, 1, 1), batch_norm(64), prelu(64)));
    output_layer = register_module(
        "output_layer",
        torch::nn::Sequential(batch_norm(output_channel), torch::nn::Dropout(0.4), torch::nn::Flatten(),
                              torch::nn::Linear(output_channel * side * side, kEmbeddingSize),
                              admis::BatchNorm1d(torch::nn::BatchNorm1dOptions(kEmbeddingSize).affine(false))));
    body = torch::nn::Sequential();
    for (const Stage& stage : stages_by_depth().at(num_layers)) {
      body->push_back(IrUnit(stage.in_channel, stage.depth, 2, bottleneck, se));
      for (std::int64_t i = 1; i < stage.units; ++i)
        body->push_back(IrUnit(stage.depth, stage.depth, 1, bottleneck, se));
    }
    register_module("body", body);
    initialize_tface_weights(*this);
  }

  torch::Tensor forward(const torch::Tensor& x) {
    return output_layer->forward(body->forward(input_layer->forward(x)));
  }

  torch::nn::Sequential input_layer{nullptr}, output_layer{nullptr}, body{nullptr};
};
TORCH_MODULE(IrseNet);

class IrBackbone final : public BackboneBase {
 public:
  explicit IrBackbone(const Params& p) : BackboneBase("ir", p.get_int("input_size"), kEmbeddingSize) {
    net_ = IrseNet(p.get_int("input_size"), p.get_int("num_layers"), p.get_string("mode") == "ir_se");
    set_module(net_.ptr());
  }

 protected:
  torch::Tensor embed(const torch::Tensor& images) override { return net_->forward(images); }

 private:
  IrseNet net_{nullptr};
};

}  // namespace

void register_tface_irse(FactoryList& registry) {
  registry.add(Kind::Backbone, "ir", "1.0.0",
               "TFace IR / IR-SE ResNet (model_irse.Backbone): 112 or 224 px faces -> 512-d embeddings",
               {input_size_param({"112", "224"}, "TFace Backbone"),
                ParamSpec::Int("num_layers", 50, "depth: 18, 34, 50, 100 (basic units) or 152, 200 (bottleneck units)")
                    .one_of({"18", "34", "50", "100", "152", "200"}),
                ParamSpec::String("mode", "ir", "'ir' plain residual units, 'ir_se' with squeeze-and-excitation")
                    .one_of({"ir", "ir_se"})},
               [](const Params& p, Host&) -> std::unique_ptr<Plugin> { return std::make_unique<IrBackbone>(p); });
}

}  // namespace admis::backbones
