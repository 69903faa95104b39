// insightface's iresnet as ElasticFace ships it (backbones/iresnet.py): a stride-1 3x3 stem,
// four stages of IBasicBlock (BN - conv3x3 - BN - PReLU - conv3x3(stride) - BN, optional SE
// gate), then BN - flatten - Dropout - Linear - BatchNorm1d whose scale is fixed at 1.
// Unlike TFace's IR it projects every stage's first shortcut (1x1 strided conv + BN) and
// names its modules conv1, bn1, prelu, layerK.N.*, bn2, fc, features, so ElasticFace's
// released 295672backbone.pth (iresnet100) loads strictly.

#include <map>

#include "backbone_base.h"

namespace admis::backbones {

namespace {

admis::BatchNorm2d batch_norm(std::int64_t channels) { return admis::BatchNorm2d(channels); }

class IBasicBlockImpl : public torch::nn::Module {
 public:
  IBasicBlockImpl(std::int64_t inplanes, std::int64_t planes, std::int64_t stride, bool use_se)
      : torch::nn::Module("IBasicBlock") {
    bn1 = register_module("bn1", batch_norm(inplanes));
    conv1 = register_module("conv1", conv_no_bias(inplanes, planes, 3, 1, 1));
    bn2 = register_module("bn2", batch_norm(planes));
    prelu = register_module("prelu", torch::nn::PReLU(torch::nn::PReLUOptions().num_parameters(planes)));
    conv2 = register_module("conv2", conv_no_bias(planes, planes, 3, stride, 1));
    bn3 = register_module("bn3", batch_norm(planes));
    if (stride != 1 || inplanes != planes)
      downsample = register_module(
          "downsample", torch::nn::Sequential(conv_no_bias(inplanes, planes, 1, stride, 0), batch_norm(planes)));
    if (use_se) se_block = register_module("se_block", SEModule(planes, 16));
  }

  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor out = bn3(conv2(prelu(bn2(conv1(bn1(x))))));
    if (se_block) out = se_block(out);
    return out + (downsample ? downsample->forward(x) : x);
  }

  admis::BatchNorm2d bn1{nullptr}, bn2{nullptr}, bn3{nullptr};
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::PReLU prelu{nullptr};
  torch::nn::Sequential downsample{nullptr};
  SEModule se_block{nullptr};
};
TORCH_MODULE(IBasicBlock);

// Blocks per stage: iresnet18/34/50/100 as ElasticFace, iresnet200 as insightface.
const std::map<std::int64_t, std::vector<std::int64_t>>& layers_by_depth() {
  static const std::map<std::int64_t, std::vector<std::int64_t>> layers = {
      {18, {2, 2, 2, 2}}, {34, {3, 4, 6, 3}}, {50, {3, 4, 14, 3}}, {100, {3, 13, 30, 3}}, {200, {6, 26, 60, 6}}};
  return layers;
}

constexpr std::int64_t kFinalSide = 7;  // 112 px after four stride-2 stages (IResNet.fc_scale = 7 * 7)

class IResNetImpl : public torch::nn::Module {
 public:
  IResNetImpl(std::int64_t depth, std::int64_t num_features, double dropout_p, bool use_se)
      : torch::nn::Module("IResNet") {
    conv1 = register_module("conv1", conv_no_bias(3, 64, 3, 1, 1));
    bn1 = register_module("bn1", batch_norm(64));
    prelu = register_module("prelu", torch::nn::PReLU(torch::nn::PReLUOptions().num_parameters(64)));
    const std::vector<std::int64_t>& layers = layers_by_depth().at(depth);
    std::int64_t inplanes = 64;
    const std::int64_t widths[4] = {64, 128, 256, 512};
    for (int stage = 0; stage < 4; ++stage) {
      torch::nn::Sequential layer;
      layer->push_back(IBasicBlock(inplanes, widths[stage], 2, use_se));
      inplanes = widths[stage];
      for (std::int64_t i = 1; i < layers[stage]; ++i) layer->push_back(IBasicBlock(inplanes, inplanes, 1, use_se));
      stages_[stage] = register_module("layer" + std::to_string(stage + 1), layer);
    }
    bn2 = register_module("bn2", batch_norm(512));
    dropout = register_module("dropout", torch::nn::Dropout(torch::nn::DropoutOptions(dropout_p)));
    fc = register_module("fc", torch::nn::Linear(512 * kFinalSide * kFinalSide, num_features));
    features = register_module("features", admis::BatchNorm1d(num_features));

    torch::NoGradGuard no_grad;
    for (const auto& m : modules(/*include_self=*/false)) {
      if (auto* conv = m->as<torch::nn::Conv2d>()) {
        conv->weight.normal_(0.0, 0.1);
      } else if (auto* bn = m->as<admis::BatchNorm2d>()) {
        bn->weight.fill_(1.0);
        bn->bias.zero_();
      }
    }
    // The embedding's BatchNorm keeps its shift learnable but its scale at 1 (frozen).
    features->weight.fill_(1.0);
    features->weight.set_requires_grad(false);
  }

  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor out = prelu(bn1(conv1(x)));
    for (auto& stage : stages_) out = stage->forward(out);
    out = torch::flatten(bn2(out), 1);
    return features(fc(dropout(out)));
  }

  torch::nn::Conv2d conv1{nullptr};
  admis::BatchNorm2d bn1{nullptr}, bn2{nullptr};
  torch::nn::PReLU prelu{nullptr};
  torch::nn::Dropout dropout{nullptr};
  torch::nn::Linear fc{nullptr};
  admis::BatchNorm1d features{nullptr};

 private:
  torch::nn::Sequential stages_[4] = {nullptr, nullptr, nullptr, nullptr};
};
TORCH_MODULE(IResNet);

class IResNetBackbone final : public BackboneBase {
 public:
  explicit IResNetBackbone(const Params& p)
      : BackboneBase("iresnet", kFinalSide * 16, p.get_int("num_features")),
        net_(IResNet(p.get_int("depth"), p.get_int("num_features"), p.get_float("dropout"), p.get_bool("use_se"))) {
    set_module(net_.ptr());
  }

 protected:
  torch::Tensor embed(const torch::Tensor& images) override { return net_->forward(images); }

 private:
  IResNet net_{nullptr};
};

}  // namespace

void register_iresnet(FactoryList& registry) {
  registry.add(Kind::Backbone, "iresnet", "1.0.0",
               "insightface iresnet as in ElasticFace (backbones/iresnet.py): 112 px faces -> embeddings",
               // The reference has one constructor per depth, so no default to follow. 18, not the
               // released 100: ElasticFace's N(0, 0.1) convolutions make a fresh iresnet100 overflow
               // to NaN in eval mode (as in Python), which an untrained default must not.
               {ParamSpec::Int("depth", 18, "iresnet depth: 18, 34, 50, 100 (ElasticFace's released model) or 200")
                    .one_of({"18", "34", "50", "100", "200"}),
                ParamSpec::Int("num_features", 512, "embedding size (the fc output)").at_least(1),
                ParamSpec::Float("dropout", 0.0, "dropout probability before fc, in train mode").range(0.0, 0.99),
                ParamSpec::Bool("use_se", false, "add a squeeze-and-excitation gate (reduction 16) to every block")},
               [](const Params& p, Host&) -> std::unique_ptr<Plugin> { return std::make_unique<IResNetBackbone>(p); });
}

}  // namespace admis::backbones
