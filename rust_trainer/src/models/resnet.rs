//! ResNets in the CIFAR form: a 3x3 stem with stride 1 and no max-pool, then four stages of
//! residual blocks, global average pooling and the classifier.
//!
//! Parameter names follow torchvision's (`conv1`, `bn1`, `layer2.0.downsample.0`, `fc`), so
//! a state dict can be exchanged with a PyTorch model of the same layout, and so does the
//! initialisation (Kaiming-normal convolutions over the fan-out, BatchNorm as the identity,
//! PyTorch's default for the classifier). `width` scales every stage's channels (64, 128,
//! 256, 512 at 1.0) for quick runs.

use tch::nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use tch::nn::{self, BatchNormConfig, ConvConfig, FuncT, Init, ModuleT};

/// A bias-free convolution, initialised as torchvision's ResNets do: Kaiming-normal with the
/// ReLU gain over the fan-out.
fn conv(vs: nn::Path, c_in: i64, c_out: i64, kernel: i64, stride: i64) -> nn::Conv2D {
    let ws_init = Init::Kaiming {
        dist: NormalOrUniform::Normal,
        fan: FanInOut::FanOut,
        non_linearity: NonLinearity::ReLU,
    };
    let config =
        ConvConfig { stride, padding: kernel / 2, bias: false, ws_init, ..Default::default() };
    nn::conv2d(vs, c_in, c_out, kernel, config)
}

/// BatchNorm starting as the identity (scale 1, shift 0), as PyTorch's does.
fn bn(vs: nn::Path, channels: i64) -> nn::BatchNorm {
    let config = BatchNormConfig { ws_init: Init::Const(1.0), ..Default::default() };
    nn::batch_norm2d(vs, channels, config)
}

/// A 1x1 convolution and BatchNorm on the shortcut, where the block changes the shape.
fn downsample(vs: nn::Path, c_in: i64, c_out: i64, stride: i64) -> FuncT<'static> {
    if stride == 1 && c_in == c_out {
        return nn::func_t(|xs, _| xs.shallow_clone());
    }
    let conv = conv(&vs / "0", c_in, c_out, 1, stride);
    let bn = bn(&vs / "1", c_out);
    nn::func_t(move |xs, train| xs.apply(&conv).apply_t(&bn, train))
}

fn basic_block(vs: nn::Path, c_in: i64, planes: i64, stride: i64) -> FuncT<'static> {
    let conv1 = conv(&vs / "conv1", c_in, planes, 3, stride);
    let bn1 = bn(&vs / "bn1", planes);
    let conv2 = conv(&vs / "conv2", planes, planes, 3, 1);
    let bn2 = bn(&vs / "bn2", planes);
    let shortcut = downsample(&vs / "downsample", c_in, planes, stride);
    nn::func_t(move |xs, train| {
        let out = xs.apply(&conv1).apply_t(&bn1, train).relu().apply(&conv2).apply_t(&bn2, train);
        (out + xs.apply_t(&shortcut, train)).relu()
    })
}

fn bottleneck_block(vs: nn::Path, c_in: i64, planes: i64, stride: i64) -> FuncT<'static> {
    let c_out = planes * 4;
    let conv1 = conv(&vs / "conv1", c_in, planes, 1, 1);
    let bn1 = bn(&vs / "bn1", planes);
    let conv2 = conv(&vs / "conv2", planes, planes, 3, stride);
    let bn2 = bn(&vs / "bn2", planes);
    let conv3 = conv(&vs / "conv3", planes, c_out, 1, 1);
    let bn3 = bn(&vs / "bn3", c_out);
    let shortcut = downsample(&vs / "downsample", c_in, c_out, stride);
    nn::func_t(move |xs, train| {
        let out = xs
            .apply(&conv1)
            .apply_t(&bn1, train)
            .relu()
            .apply(&conv2)
            .apply_t(&bn2, train)
            .relu()
            .apply(&conv3)
            .apply_t(&bn3, train);
        (out + xs.apply_t(&shortcut, train)).relu()
    })
}

#[derive(Debug, Clone, Copy)]
enum Block {
    Basic,
    Bottleneck,
}

impl Block {
    fn expansion(self) -> i64 {
        match self {
            Self::Basic => 1,
            Self::Bottleneck => 4,
        }
    }
}

fn stage(
    vs: nn::Path,
    block: Block,
    c_in: i64,
    planes: i64,
    stride: i64,
    blocks: usize,
) -> nn::SequentialT {
    let mut layer = nn::seq_t();
    let mut c_in = c_in;
    for index in 0..blocks {
        let stride = if index == 0 { stride } else { 1 };
        let path = &vs / index;
        layer = match block {
            Block::Basic => layer.add(basic_block(path, c_in, planes, stride)),
            Block::Bottleneck => layer.add(bottleneck_block(path, c_in, planes, stride)),
        };
        c_in = planes * block.expansion();
    }
    layer
}

fn resnet(
    vs: &nn::Path,
    block: Block,
    depths: [usize; 4],
    channels: i64,
    classes: i64,
    width: f64,
    dropout: f64,
) -> FuncT<'static> {
    let base = ((64.0 * width).round() as i64).max(1);
    let conv1 = conv(vs / "conv1", channels, base, 3, 1);
    let bn1 = bn(vs / "bn1", base);
    let mut c_in = base;
    let mut layers = Vec::new();
    for (index, (&blocks, multiple)) in depths.iter().zip([1, 2, 4, 8]).enumerate() {
        let stride = if index == 0 { 1 } else { 2 };
        let planes = base * multiple;
        layers.push(stage(vs / format!("layer{}", index + 1), block, c_in, planes, stride, blocks));
        c_in = planes * block.expansion();
    }
    let fc = super::linear(vs / "fc", c_in, classes);
    nn::func_t(move |xs, train| {
        let mut out = xs.apply(&conv1).apply_t(&bn1, train).relu();
        for layer in &layers {
            out = out.apply_t(layer, train);
        }
        out.adaptive_avg_pool2d([1, 1]).flatten(1, -1).dropout(dropout, train).apply(&fc)
    })
}

/// ResNet-18: basic blocks, 2-2-2-2.
pub fn resnet18(
    vs: &nn::Path,
    channels: i64,
    classes: i64,
    width: f64,
    dropout: f64,
) -> impl ModuleT {
    resnet(vs, Block::Basic, [2, 2, 2, 2], channels, classes, width, dropout)
}

/// ResNet-34: basic blocks, 3-4-6-3.
pub fn resnet34(
    vs: &nn::Path,
    channels: i64,
    classes: i64,
    width: f64,
    dropout: f64,
) -> impl ModuleT {
    resnet(vs, Block::Basic, [3, 4, 6, 3], channels, classes, width, dropout)
}

/// ResNet-50: bottleneck blocks, 3-4-6-3.
pub fn resnet50(
    vs: &nn::Path,
    channels: i64,
    classes: i64,
    width: f64,
    dropout: f64,
) -> impl ModuleT {
    resnet(vs, Block::Bottleneck, [3, 4, 6, 3], channels, classes, width, dropout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    fn count(vs: &nn::VarStore) -> i64 {
        vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
    }

    #[test]
    fn full_width_parameter_counts_match_the_cifar_resnets() {
        // The well-known sizes of the CIFAR-10 ResNets (3x3 stem, 10 classes).
        let vs = nn::VarStore::new(Device::Cpu);
        let _model = resnet18(&vs.root(), 3, 10, 1.0, 0.0);
        assert_eq!(count(&vs), 11_173_962);
        let vs = nn::VarStore::new(Device::Cpu);
        let _model = resnet34(&vs.root(), 3, 10, 1.0, 0.0);
        assert_eq!(count(&vs), 21_282_122);
        let vs = nn::VarStore::new(Device::Cpu);
        let _model = resnet50(&vs.root(), 3, 10, 1.0, 0.0);
        assert_eq!(count(&vs), 23_520_842);
    }

    #[test]
    fn names_follow_torchvision() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _model = resnet18(&vs.root(), 3, 10, 0.25, 0.0);
        let names = vs.variables();
        for name in [
            "conv1.weight",
            "bn1.running_mean",
            "layer1.0.conv1.weight",
            "layer2.0.downsample.0.weight",
            "layer2.0.downsample.1.bias",
            "layer4.1.bn2.weight",
            "fc.weight",
        ] {
            assert!(names.contains_key(name), "missing {name}");
        }
    }

    #[test]
    fn works_on_cifar_and_mnist_shapes() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = resnet50(&vs.root(), 1, 10, 0.125, 0.0);
        let xs = Tensor::randn([2, 1, 28, 28], (Kind::Float, Device::Cpu));
        // Global pooling makes any input size work: 28x28 grey digits included.
        assert_eq!(model.forward_t(&xs, true).size(), vec![2, 10]);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = resnet18(&vs.root(), 3, 10, 0.125, 0.0);
        let xs = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        assert_eq!(model.forward_t(&xs, false).size(), vec![2, 10]);
    }
}
