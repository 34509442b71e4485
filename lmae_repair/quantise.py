"""int8 inference on a CPU (`--precision int8`, which `auto` picks on CPUs with VNNI and no native
bf16, see `inference.int8_pays`): the transformer's linear layers (`Int8Linear`) and the image
branch's U-Net (static quantisation, below).

Why: on such a CPU the U-Net of a model with an image branch took more time than the whole
transformer (the camvid 0.25 model: 12.2 of 21.1 s of model time on CamVid val). PyTorch's static
quantisation (FX graph mode, x86 backend: fbgemm's VNNI kernels) runs its convolutions and
activations in int8: 136 -> 46 ms per four 240x224 tiles on a 2-core Xeon, and `evaluate` on
CamVid val gave the same figures to the third decimal (objects PA-mIoU 0.172 vs 0.171, restored
0.347 vs 0.343; see benchmarks/README.md).

Static quantisation needs each activation's range, measured on real images ("calibration"). The
ranges are measured when `train` saves a checkpoint (on a few of its training crops) and stored in
the checkpoint (`CheckpointInfo.int8_calibration`), so a checkpoint gives the same outputs
whatever data it runs on, resumed or not. A checkpoint without them runs its U-Net in float32.

Where its time goes now: convolutions 41%, GELU 25% and the conversions around it 13% (the x86
backend runs GELU in float between a dequantise and a quantise; PyTorch's quantised GELU kernel
was no faster: 0.97 against 1.03 ms on a 16 x 224 x 240 map, so that was left alone).
"""

from __future__ import annotations

import copy
import importlib
import warnings

import torch
from torch import nn

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
        example = (torch.zeros(1, 3, 4 * ImageBranch.MULTIPLE, 4 * ImageBranch.MULTIPLE),)
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
def calibrate(model: nn.Module, images: list[torch.Tensor]) -> list[list[float]]:
    """The range of each activation of `model`'s U-Net on `images` ((3, H, W) in [0, 1], sides
    multiples of ImageBranch.MULTIPLE), as PyTorch's default x86 observers choose it (from
    histograms, so that a few outlying values do not spread the range); [] without a branch."""
    if getattr(model, "branch", None) is None or not images:
        return []
    observed, observers = _observed(model.branch)
    mean, std = model.mean.float().cpu(), model.std.float().cpu()
    for image in images:
        observed((image[None].float().cpu() - mean) / std)
    return [_range(observer) for _, observer in observers]


def union(calibrations: list[list[list[float]]]) -> list[list[float]]:
    """Ranges that cover each of `calibrations` (of one architecture): for averaged weights, whose
    activations lie between those of the checkpoints averaged. Empty if any of them is."""
    if not calibrations or any(not calibration for calibration in calibrations):
        return []
    if len({len(calibration) for calibration in calibrations}) != 1:
        return []
    return [[min(r[0] for r in ranges), max(r[1] for r in ranges)] for ranges in zip(*calibrations)]


def quantised_branch(branch: ImageBranch, calibration: list[list[float]]) -> nn.Module | None:
    """The U-Net with int8 convolutions and activations at the calibrated ranges, as a module
    mapping normalised images (B, 3, H, W) to float features (B, w, H, W); None when the
    calibration does not fit this U-Net (another architecture or PyTorch version) or the x86
    quantised engine is missing."""
    if not calibration or BACKEND not in torch.backends.quantized.supported_engines:
        return None
    observed, observers = _observed(branch)
    if len(observers) != len(calibration):
        return None
    quantization = _quantization()
    for (names, observer), (low, high) in zip(observers, calibration):
        low, high = min(low, 0.0), max(high, 0.0)
        span = observer.quant_max - observer.quant_min
        scale = max((high - low) / span, 1e-8)
        zero_point = int(min(max(round(observer.quant_min - low / scale), observer.quant_min), observer.quant_max))
        fixed = quantization.FixedQParamsObserver(scale, zero_point, observer.dtype, torch.per_tensor_affine, observer.quant_min, observer.quant_max)
        for name in names:
            setattr(observed, name, fixed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return QuantisedBranch(quantization.quantize_fx.convert_fx(observed))


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


class QuantisedBranch(nn.Module):
    """Stands in for `ImageBranch` at inference on a CPU: features from the int8 U-Net, one image
    at a time (as `ImageBranch.forward` does on a CPU, and for the same reason: cache)."""

    def __init__(self, features: nn.Module):
        super().__init__()
        self.features = features

    def forward(self, normalised: torch.Tensor) -> torch.Tensor:
        if len(normalised) == 1:  # a whole image (inference.whole_image_features): no copy
            return self.features(normalised.float())
        return torch.cat([self.features(one.float()) for one in normalised.split(1)])
