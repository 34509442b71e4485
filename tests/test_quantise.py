"""int8 U-Net of the image branch (quantise.py): close to the float one, used only where the
checkpoint carries its calibration, and the calibration survives saving and averaging."""

import pytest
import torch

from lmae_repair.checkpoints import CheckpointInfo, average_checkpoints, load_checkpoint, save_checkpoint
from lmae_repair.inference import for_inference, predict_many
from lmae_repair.labelspace import LabelSpace
from lmae_repair.model import ImageBranch, LabelMAE, ModelConfig
from lmae_repair.quantise import Int8Linear, Int8UNet, _observed, _quantization, calibrate, quantised_branch, union

pytestmark = pytest.mark.skipif("x86" not in torch.backends.quantized.supported_engines, reason="needs PyTorch's x86 int8 engine")

CONFIG = ModelConfig(num_classes=3, patch_size=8, enc_depth=1, enc_dim=32, enc_heads=4, dec_depth=1, dec_dim=16,
                     dec_heads=2, refine_channels=4, image_branch=4)


def smooth_images(count: int, height: int = 32, width: int = 40) -> list[torch.Tensor]:
    """Images with structure (blurred noise), in [0, 1]: what a U-Net's activations are calibrated on."""
    noise = torch.rand(count, 3, height // 4, width // 4)
    return list(torch.nn.functional.interpolate(noise, size=(height, width), mode="bilinear", align_corners=False))


def trained_like_model() -> LabelMAE:
    torch.manual_seed(0)
    model = LabelMAE(CONFIG)
    model.train()
    for _ in range(3):  # BatchNorm statistics of real inputs, not the initial 0 / 1
        model.branch(torch.stack(smooth_images(4)) * 2 - 1)
    torch.nn.init.normal_(model.refine.layers[-1].weight, std=0.5)  # a trained refiner reads the features
    return model.eval()


def test_int8_u_net_gives_features_close_to_the_float_one():
    model = trained_like_model()
    calibration = calibrate(model, smooth_images(6))
    assert len(calibration) > 10 and all(low <= 0.0 <= high for low, high in calibration)
    int8 = quantised_branch(model.branch, calibration)
    assert isinstance(int8, Int8UNet)
    normalised = (torch.stack(smooth_images(3)) - model.mean) / model.std
    with torch.no_grad():
        expected, got = model.branch(normalised), int8(normalised)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert (got - expected).norm() / expected.norm() < 0.15
    assert quantised_branch(model.branch, []) is None  # no calibration: no int8 U-Net
    assert quantised_branch(model.branch, calibration[:-1]) is None  # another architecture's


def test_a_u_net_that_reads_labels_is_calibrated_on_labelled_crops_and_runs_in_int8_close_to_float():
    torch.manual_seed(0)
    model = LabelMAE(ModelConfig(**{**CONFIG.to_dict(), "branch_reads_labels": True}))
    images = smooth_images(6)
    labels = [torch.randint(0, 4, (32, 40)) for _ in images]  # 3 = void
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model.branch(model.branch_input((torch.stack(images[:4]) - model.mean) / model.std, torch.stack(labels[:4])))
    model.eval()
    assert calibrate(model, images) == []  # without labels a label-reading U-Net cannot be measured
    calibration = calibrate(model, images, labels)
    int8 = quantised_branch(model.branch, calibration)
    assert isinstance(int8, Int8UNet)
    inputs = model.branch_input((torch.stack(images[:3]) - model.mean) / model.std, torch.stack(labels[:3]))
    with torch.no_grad():
        expected, got = model.branch(inputs), int8(inputs)
    assert (got - expected).norm() / expected.norm() < 0.15


def fx_int8_u_net(branch: ImageBranch, calibration: list[list[float]]) -> torch.nn.Module:
    """PyTorch's own static quantisation (FX graph mode) of the U-Net at the calibrated ranges:
    the reference `Int8UNet` must match (it was the implementation until 2026-11-23)."""
    quantization = _quantization()
    observed, observers = _observed(branch)
    for (names, observer), (low, high) in zip(observers, calibration):
        low, high = min(low, 0.0), max(high, 0.0)
        scale = max((high - low) / (observer.quant_max - observer.quant_min), 1e-8)
        zero_point = int(min(max(round(observer.quant_min - low / scale), observer.quant_min), observer.quant_max))
        fixed = quantization.FixedQParamsObserver(scale, zero_point, observer.dtype, torch.per_tensor_affine,
                                                  observer.quant_min, observer.quant_max)
        for name in names:
            setattr(observed, name, fixed)
    return quantization.quantize_fx.convert_fx(observed)


def test_int8_u_net_computes_what_pytorchs_static_quantisation_computes():
    model = trained_like_model()
    calibration = calibrate(model, smooth_images(6))
    normalised = (torch.stack(smooth_images(2)) - model.mean) / model.std
    with torch.no_grad():
        expected = torch.cat([fx_int8_u_net(model.branch, calibration)(one) for one in normalised.split(1)])
        got = quantised_branch(model.branch, calibration)(normalised)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) < 1e-5  # the same int8 codes; float rounding in the last GELU


def test_int8_inference_uses_the_u_net_only_with_a_calibration_and_keeps_the_predictions():
    model = trained_like_model()
    calibration = calibrate(model, smooth_images(6))
    assert isinstance(for_inference(model, "int8", calibration).branch, Int8UNet)
    assert isinstance(for_inference(model, "int8", []).branch, ImageBranch)
    assert isinstance(for_inference(model, "fp32", calibration).branch, ImageBranch)
    assert isinstance(model.branch, ImageBranch)  # the model handed in is left as it was
    image, label = smooth_images(1, 40, 48)[0], torch.randint(0, 3, (40, 48))
    mask = torch.rand(30) < 0.5
    with torch.no_grad():
        expected = predict_many(model, [image], [label], [mask], 32)[0]
        got = predict_many(for_inference(model, "int8", calibration), [image], [label], [mask], 32)[0]
    hidden = mask.view(5, 6).repeat_interleave(8, 0).repeat_interleave(8, 1)
    agree = (got.argmax(0) == expected.argmax(0))[hidden].float().mean()
    assert agree > 0.9, float(agree)


def test_bf16_on_a_cpu_runs_the_u_net_in_int8_where_the_cpu_has_vnni(monkeypatch):
    """With bf16 the transformer runs in bf16 autocast; its U-Net is faster in int8 where the CPU
    has VNNI (AMD EPYC: 34 against 86 ms a CamVid frame), and runs in bf16 where it has not, and
    under bf16 autocast on a GPU."""
    model = trained_like_model()
    calibration = calibrate(model, smooth_images(6))
    monkeypatch.setattr("lmae_repair.inference.int8_pays", lambda device: True)
    quantised = for_inference(model, "bf16", calibration)
    assert isinstance(quantised.branch, Int8UNet)
    assert not any(isinstance(module, Int8Linear) for module in quantised.modules())  # linear layers stay for autocast
    image, label = smooth_images(1, 40, 48)[0], torch.randint(0, 3, (40, 48))
    mask = torch.rand(30) < 0.5
    with torch.no_grad():
        expected = predict_many(model, [image], [label], [mask], 32)[0]
        got = predict_many(quantised, [image], [label], [mask], 32, autocast=True, needed=[mask])[0]
    hidden = mask.view(5, 6).repeat_interleave(8, 0).repeat_interleave(8, 1)
    assert (got.argmax(0) == expected.argmax(0))[hidden].float().mean() > 0.9
    monkeypatch.setattr("lmae_repair.inference.int8_pays", lambda device: False)
    assert isinstance(for_inference(model, "bf16", calibration).branch, ImageBranch)


def test_calibration_is_saved_with_the_checkpoint_and_averages_to_ranges_covering_both(tmp_path):
    model = trained_like_model()
    space = LabelSpace(3, ["background", "crack", "spalling"], background_id=0, void_id=255)
    first = calibrate(model, smooth_images(4))
    second = [[low * 2, high / 2] for low, high in first]
    paths = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for path, calibration in zip(paths, (first, second)):
        save_checkpoint(path, model, CheckpointInfo(CONFIG, 0.5, space, int8_calibration=calibration))
    assert load_checkpoint(paths[0])[1].int8_calibration == first
    _, info = average_checkpoints(paths)
    assert info.int8_calibration == [[min(a[0], b[0]), max(a[1], b[1])] for a, b in zip(first, second)]
    assert union([first, []]) == []  # one checkpoint without ranges: the average has none


def test_int8_linear_is_close_to_float_and_each_row_is_its_own():
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 24)
    x = torch.randn(2, 7, 48) * torch.tensor([1.0, 50.0]).view(2, 1, 1)  # two samples, very different ranges
    int8 = Int8Linear(linear)
    with torch.no_grad():
        together, expected = int8(x), linear(x)
        assert torch.equal(together[0], int8(x[:1])[0])  # the small sample does not see the large one
        assert float((together - expected).norm() / expected.norm()) < 0.02


def test_int8_inference_gives_each_image_the_same_result_whatever_shares_its_batch():
    """`complete --batch-size 1` and `--batch-size 8`, and a resumed run, must write the same label."""
    model = trained_like_model()
    int8 = for_inference(model, "int8", calibrate(model, smooth_images(6)))
    assert not any(type(m) is torch.nn.Linear for m in int8.modules())
    images = smooth_images(3, 40, 48)
    images[1] = images[1] * 0.2  # a darker image beside it
    labels = [torch.randint(0, 3, (40, 48)) for _ in images]
    masks = [torch.rand(30) < 0.5 for _ in images]
    with torch.no_grad():
        together = predict_many(int8, images, labels, masks, 32)
        alone = [predict_many(int8, [i], [l], [m], 32)[0] for i, l, m in zip(images, labels, masks)]
    # float rounding only (kernels block a batch differently; float32 differs as much), not a
    # quantisation step: a shared int8 range moved probabilities by about 1e-2
    assert max(float((a - b).abs().max()) for a, b in zip(together, alone)) < 1e-5


def test_int8_linear_scales_its_products_exactly_as_the_promoting_multiplication_did():
    """The int32 products are made float before the row scale multiplies them (faster kernels);
    the result must be the bits the mixed int32 x float32 multiplication gave (the labels
    `complete` writes stay byte-identical)."""
    torch.manual_seed(0)
    for bias in (True, False):
        int8 = Int8Linear(torch.nn.Linear(512, 96, bias=bias))
        x = torch.randn(3, 50, 512) * 40.0
        rows = x.reshape(-1, 512)
        scale = torch.maximum(rows.amax(1, keepdim=True), rows.amin(1, keepdim=True).neg_()).clamp_(min=1e-12).div_(127.0)
        products = torch.mul(torch._int_mm(torch.div(rows, scale).round_().to(torch.int8), int8.weight_t), scale)
        old = products.mul_(int8.weight_scale) if int8.bias is None else torch.addcmul(int8.bias, products, int8.weight_scale)
        with torch.no_grad():
            assert torch.equal(int8(x), old.view(3, 50, 96))
