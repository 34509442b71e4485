"""int8 inference on a CPU (`--precision int8`, which `auto` picks on CPUs with VNNI and no native
bf16, see `inference.int8_pays`): the transformer's linear layers (`Int8Linear`) and the image
branch's U-Net (static quantisation, below).

Why: on such a CPU the U-Net of a model with an image branch took more time than the whole
transformer (the camvid 0.25 model: 12.2 of 21.1 s of model time on CamVid val). Its int8 form
(`Int8UNet`: fbgemm's VNNI convolutions at the ranges PyTorch's static quantisation would use)
took 136 -> 46 ms per four 240x224 tiles on a 2-core Xeon with PyTorch's FX graph mode, and
`evaluate` on CamVid val gave the same figures to the third decimal (objects PA-mIoU 0.172 vs
0.171, restored 0.347 vs 0.343; see benchmarks/README.md). `Int8UNet` computes the same int8
codes as FX without it: 34 -> 26 ms per 480x368 frame, and no 2.4 s of FX set-up per run.

Static quantisation needs each activation's range, measured on real images ("calibration"). The
ranges are measured when `train` saves a checkpoint (on a few of its training crops, with FX's
observers: `calibrate`) and stored in the checkpoint (`CheckpointInfo.int8_calibration`), so a
checkpoint gives the same outputs whatever data it runs on, resumed or not. A checkpoint without
them runs its U-Net in float32.
"""

from __future__ import annotations

import copy
import importlib
import warnings

import cv2
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from lmae_repair.model import ImageBranch

BACKEND = "x86"


def _quantization():
    """`torch.ao.quantization` with its FX tools, imported on first use (it takes a while to
    import, and PyTorch warns that it will move)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        importlib.import_module("torch.ao.quantization.quantize_fx")  # the submodule used below
        return importlib.import_module("torch.ao.quantization")


class _Features(nn.Module):
    """The U-Net's feature path (what the refiner reads) as a module FX can trace."""

    def __init__(self, branch: ImageBranch):
        super().__init__()
        self.branch = branch

    def forward(self, normalised: torch.Tensor) -> torch.Tensor:
        return self.branch._features(normalised)


def _observed(branch: ImageBranch) -> tuple[nn.Module, list[tuple[list[str], nn.Module]]]:
    """A float copy of the U-Net with an observer on each activation (FX inserts them, and folds
    each BatchNorm into its convolution), and those observers in graph order, each with the names
    it has in the graph (an observer is shared where an operation keeps its input's range)."""
    quantization = _quantization()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        features = _Features(copy.deepcopy(branch).float().cpu().eval())
        example = (torch.zeros(1, branch.down[0][0].in_channels, 4 * ImageBranch.MULTIPLE, 4 * ImageBranch.MULTIPLE),)
        observed = quantization.quantize_fx.prepare_fx(features, quantization.get_default_qconfig_mapping(BACKEND), example)
    names: dict[int, list[str]] = {}
    modules = {}
    for name, module in observed._modules.items():
        if isinstance(module, quantization.observer.ObserverBase):
            names.setdefault(id(module), []).append(name)
            modules[id(module)] = module
    order = sorted(names, key=lambda key: min(int(name.rsplit("_", 1)[-1]) for name in names[key]))
    return observed, [(names[key], modules[key]) for key in order]


def _range(observer: nn.Module) -> list[float]:
    """The [low, high] float range an observer's scale and zero point represent."""
    scale, zero_point = (float(value) for value in observer.calculate_qparams())
    return [(observer.quant_min - zero_point) * scale, (observer.quant_max - zero_point) * scale]


@torch.no_grad()
def calibrate(model: nn.Module, images: list[torch.Tensor], labels: list[torch.Tensor] | None = None) -> list[list[float]]:
    """The range of each activation of `model`'s U-Net on `images` ((3, H, W) in [0, 1], sides
    multiples of ImageBranch.MULTIPLE), as PyTorch's default x86 observers choose it (from
    histograms, so that a few outlying values do not spread the range); [] without a branch.
    A U-Net that reads the labels (`ModelConfig.branch_reads_labels`) is measured on `images`
    with their `labels` ((H, W) class indices); [] without them."""
    branch = getattr(model, "branch", None)
    if branch is None or not images or (reads_labels(branch) and not labels):
        return []
    observed, observers = _observed(branch)
    mean, std = model.mean.float().cpu(), model.std.float().cpu()
    for i, image in enumerate(images):
        normalised = (image[None].float().cpu() - mean) / std
        if reads_labels(branch):
            normalised = model.branch_input(normalised, labels[i][None].cpu())  # reads no weights
        observed(normalised)
    return [_range(observer) for _, observer in observers]


def reads_labels(branch: ImageBranch) -> bool:
    """Whether the U-Net also reads label planes (`ModelConfig.branch_reads_labels`)."""
    return branch.down[0][0].in_channels != 3


def union(calibrations: list[list[list[float]]]) -> list[list[float]]:
    """Ranges that cover each of `calibrations` (of one architecture): for averaged weights, whose
    activations lie between those of the checkpoints averaged. Empty if any of them is."""
    if not calibrations or any(not calibration for calibration in calibrations):
        return []
    if len({len(calibration) for calibration in calibrations}) != 1:
        return []
    return [[min(r[0] for r in ranges), max(r[1] for r in ranges)] for ranges in zip(*calibrations)]


ACTIVATION_RANGE = (0, 127)  # quint8 codes the x86 backend's activation observers use (reduce_range)


def quantised_branch(branch: ImageBranch, calibration: list[list[float]]) -> nn.Module | None:
    """The U-Net with int8 convolutions and activations at the calibrated ranges (`Int8UNet`), as a
    module mapping normalised images (B, 3, H, W) to float features (B, w, H, W); None when the
    calibration does not fit this U-Net (another architecture) or the x86 quantised engine is
    missing."""
    if not calibration or BACKEND not in torch.backends.quantized.supported_engines:
        return None
    if len(calibration) != Int8UNet.ranges_needed(branch):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch's notice that quantised tensors will change
        return Int8UNet(branch, calibration)


def _qparams(low: float, high: float) -> tuple[float, int]:
    """(scale, zero point) of a calibrated [low, high] range, as a fixed observer computes them."""
    qmin, qmax = ACTIVATION_RANGE
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max((high - low) / (qmax - qmin), 1e-8)
    zero_point = int(min(max(round(qmin - low / scale), qmin), qmax))
    return float(torch.tensor(scale, dtype=torch.float32)), zero_point  # stored as float32, as by FX


def _codes(q: torch.Tensor) -> torch.Tensor:
    """The uint8 codes of a quantised tensor, sharing its memory (same shape and strides)."""
    return torch.empty(0, dtype=torch.uint8).set_(q.untyped_storage(), q.storage_offset(), q.shape, q.stride())


def _flat(t: torch.Tensor):
    """A dense tensor's memory as a 2-D numpy array (for OpenCV), whatever its memory format."""
    flat = torch.empty(0, dtype=t.dtype if not t.is_quantized else torch.uint8)
    flat.set_(t.untyped_storage(), t.storage_offset(), (t.shape[0] * t.shape[2], t.shape[1] * t.shape[3]))
    return flat.numpy()


def _like(q: torch.Tensor, qparams: tuple[float, int] | None) -> torch.Tensor:
    """An empty tensor laid out like `q`: quantised at `qparams`, or float32 when None."""
    layout = torch.channels_last if q.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    if qparams is None:
        return torch.empty(q.shape, dtype=torch.float32, memory_format=layout)
    scale, zero_point = qparams
    return torch._empty_affine_quantized(q.shape, scale=scale, zero_point=zero_point, dtype=torch.quint8, memory_format=layout)


class _Gelu:
    """GELU from one quantised range to another (or to float) as a 256-entry table: a quantised
    input has only 256 values. The x86 backend runs GELU in float between a dequantise and a
    quantise (3.7 ms on a 16 x 368 x 480 map, 2-core Xeon); the table, through OpenCV's LUT, is
    the same arithmetic done once per code (0.6 ms)."""

    def __init__(self, source: tuple[float, int], target: tuple[float, int] | None):
        codes = torch._make_per_tensor_quantized_tensor(torch.arange(256, dtype=torch.uint8), *source)
        values = F.gelu(codes.dequantize())
        self.target = target
        self.table = (values if target is None else torch.quantize_per_tensor(values, *target, torch.quint8).int_repr()).numpy()

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        out = _like(q, self.target)
        cv2.LUT(_flat(q), self.table, dst=_flat(out))
        return out


class _Conv:
    """A 3 x 3 convolution (its BatchNorm folded in) with int8 weights, one scale per output
    channel (symmetric, as the x86 backend's weight observer), writing at `target`."""

    def __init__(self, conv: nn.Conv2d, norm: nn.BatchNorm2d, target: tuple[float, int]):
        fused = fuse_conv_bn_eval(conv, norm) if isinstance(norm, nn.BatchNorm2d) else conv
        weight = fused.weight.detach().float()
        scale = (weight.flatten(1).abs().amax(1) / 127.5).clamp(min=torch.finfo(torch.float32).eps)
        qweight = torch.quantize_per_channel(weight, scale.double(), torch.zeros(len(scale), dtype=torch.long), 0, torch.qint8)
        bias = None if fused.bias is None else fused.bias.detach().float()
        self.packed = torch.ops.quantized.conv2d_prepack(qweight, bias, list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)
        self.target = target

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.conv2d(q, self.packed, *self.target)


class Int8UNet(nn.Module):
    """`ImageBranch._features` in int8: convolutions in fbgemm's int8 kernels, GELUs as tables,
    skip concatenations as plain byte copies (both halves share one range), max pooling and
    nearest upsampling on the int8 codes. The last GELU gives float features.

    Why not PyTorch's FX graph mode (used until 2026-11-23): converting took 2.4 s at every start
    of `complete` (FX's imports: a seventh of a 101-pair run), and its GELUs (dequantise, float
    GELU, quantise) and concatenations (which requantise) were half of the U-Net's time. The
    arithmetic is the same: the calibration ranges are those FX's observers measured (`calibrate`,
    in its graph order: the input; per down level conv, GELU, conv, GELU, pooling (unused:
    pooling keeps its input's range); the last down level and each up level conv, GELU, conv,
    each ending in the range of the skip it is concatenated with; the last ends in float)."""

    @staticmethod
    def ranges_needed(branch: ImageBranch) -> int:
        levels = len(branch.down)
        return 1 + 5 * (levels - 1) + 3 + 3 * len(branch.up)

    def __init__(self, branch: ImageBranch, calibration: list[list[float]]):
        super().__init__()
        branch = copy.deepcopy(branch).float().cpu().eval()
        ranges = iter([_qparams(low, high) for low, high in calibration])
        self.source = next(ranges)
        self.down, skips = [], []
        for level, block in enumerate(branch.down):
            conv1, gelu1, conv2 = next(ranges), next(ranges), next(ranges)
            last = level == len(branch.down) - 1
            gelu2 = skips[-1] if last else next(ranges)
            if not last:
                next(ranges)  # the pooling's
                skips.append(gelu2)
            self.down.append(self._block(block, conv1, gelu1, conv2, gelu2))
        self.up = []
        for level, block in enumerate(branch.up):
            conv1, gelu1, conv2 = next(ranges), next(ranges), next(ranges)
            following_skip = len(skips) - 2 - level
            gelu2 = skips[following_skip] if following_skip >= 0 else None
            self.up.append(self._block(block, conv1, gelu1, conv2, gelu2))

    @staticmethod
    def _block(block: nn.Sequential, conv1, gelu1, conv2, gelu2) -> list:
        return [_Conv(block[0], block[1], conv1), _Gelu(conv1, gelu1), _Conv(block[3], block[4], conv2), _Gelu(conv2, gelu2)]

    def forward(self, normalised: torch.Tensor) -> torch.Tensor:
        """Features (B, w, H, W), one image at a time (cache, as `ImageBranch.forward` on a CPU)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            features = [self._features(one) for one in normalised.float().split(1)]
        return features[0] if len(features) == 1 else torch.cat(features)

    def _features(self, image: torch.Tensor) -> torch.Tensor:
        x = torch.quantize_per_tensor(image, *self.source, torch.quint8)
        skips = []
        for level, layers in enumerate(self.down):
            x = self._run(layers, x if level == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for layers, skip in zip(self.up, reversed(skips[:-1])):
            x = self._run(layers, _concatenate(F.interpolate(x, scale_factor=2.0), skip))
        return x

    @staticmethod
    def _run(layers: list, x: torch.Tensor) -> torch.Tensor:
        for layer in layers:
            x = layer(x)
        return x


def _concatenate(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Two quantised tensors of one range joined along channels by copying their codes (PyTorch's
    quantised `cat` requantises: 13 ms against 3 on a 48 x 368 x 480 map)."""
    if (a.q_scale(), a.q_zero_point()) != (b.q_scale(), b.q_zero_point()):
        return torch.cat([a, b], 1)
    shape = (a.shape[0], a.shape[1] + b.shape[1], *a.shape[2:])
    out = torch._empty_affine_quantized(shape, scale=a.q_scale(), zero_point=a.q_zero_point(), dtype=torch.quint8,
                                        memory_format=torch.channels_last)
    codes = _codes(out)
    codes[:, : a.shape[1]] = _codes(a)
    codes[:, a.shape[1] :] = _codes(b)
    return out


class Int8Linear(nn.Module):
    """A linear layer in int8 for CPU inference: the weight stored in int8 with one scale per
    output channel, each input row (token) quantised to int8 with its own scale, products summed
    in int32 (`torch._int_mm`, VNNI), then scaled back to float.

    Why not PyTorch's dynamic quantisation (`quantize_dynamic`, used until 2026-11-23): it
    quantises the whole input with one range, so a token's result depended on every other tile
    in its batch: the same pair came out differently with another `--batch-size`, or after a
    resumed run (`complete examples/camvid` at batch sizes 1 and 5: 10 of 12 labels differed). One scale per row makes each
    token's result its own, whatever shares the batch, and is closer to float32 (relative error
    0.008 against 0.021 on the camvid model's layer shapes); it costs about 1.1 ms against 0.8
    for a 1280 x 256 x 768 product on a 2-core Xeon (float32: 1.8)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float().cpu()
        scale = weight.abs().amax(1).clamp(min=1e-12) / 127.0
        self.register_buffer("weight_t", torch.round(weight / scale[:, None]).to(torch.int8).t().contiguous())
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().cpu())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1]).float()
        scale = torch.maximum(rows.amax(1, keepdim=True), rows.amin(1, keepdim=True).neg_()).clamp_(min=1e-12).div_(127.0)
        # int32 products made float, then times the row scale: the same values as the promoting
        # torch.mul(int32, float) (which casts each product to float32 first), in PyTorch's
        # vectorised float kernels rather than its slower mixed-dtype path (1.2 -> 0.5 ms on a
        # 3136 x 256 product, one core; 24 CamVid pairs: 0.36 -> 0.25 s of 5.3 s model time)
        products = torch._int_mm(torch.div(rows, scale).round_().to(torch.int8), self.weight_t).float().mul_(scale)
        out = products.mul_(self.weight_scale) if self.bias is None else torch.addcmul(self.bias, products, self.weight_scale)
        return out.view(*shape[:-1], out.shape[-1])


def int8_linears(model: nn.Module) -> nn.Module:
    """A copy of `model` with every nn.Linear an `Int8Linear` (the transformer's matrix work);
    `model` itself unchanged. Where this PyTorch has no int8 matrix product on the CPU
    (`torch._int_mm`), the model comes back as it is (float32)."""
    try:
        torch._int_mm(torch.ones(1, 8, dtype=torch.int8), torch.ones(8, 1, dtype=torch.int8))
    except (AttributeError, RuntimeError):
        return model
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Linear:
                setattr(parent, name, Int8Linear(child))
    return model
