"""Training throughput of the L-MAE presets (images/s), on random 224x224 crops.

Run by hand: `python benchmarks/train_speed.py [--presets tiny base] [--device cuda] [--steps 20]`.
It times full training steps (masking, forward, weighted loss, backward, Adam) after warm-up,
with bf16 autocast on GPU as `lmae-repair train` uses, and prints one row per preset with the
FLOPs of a step and, on a known GPU, the model FLOPs utilisation (MFU).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from lmae_repair.labelspace import LabelSpace
from lmae_repair.losses import lmae_loss
from lmae_repair.masking import expand_patch_mask, mixed_training_mask
from lmae_repair.model import LabelMAE, preset_config

# Dense bf16 peak of the GPUs this was meant for (TFLOP/s, NVIDIA data sheets, SXM, no sparsity).
# Checked in this order (the first name found in the GPU's name wins): PCIe and NVL H100s are slower.
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}


def measure(preset: str, device: torch.device, batch: int, crop: int, steps: int, classes: int) -> tuple[float, int, float]:
    """(images/s, parameters, FLOPs of one training step counted by PyTorch's FlopCounterMode)."""
    torch.manual_seed(0)
    model = LabelMAE(preset_config(preset, classes)).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)
    space = LabelSpace(classes, background_id=0, void_id=255)
    image = torch.rand(batch, 3, crop, crop, device=device)
    label = torch.randint(0, classes, (batch, crop, crop), device=device)
    objects = torch.zeros_like(label, dtype=torch.bool)
    p = model.config.patch_size
    grid = (crop // p, crop // p)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        inputs, mask, _ = mixed_training_mask(label, objects, p, space, 0.5, (1, 2, 2, 2), generator)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(image, inputs, mask)
        loss = lmae_loss(logits, label, None, expand_patch_mask(mask, grid, p))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    with FlopCounterMode(display=False) as counter:
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start), model.num_parameters(), counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--classes", type=int, default=11)
    args = parser.parse_args()
    device = torch.device(args.device)
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
    print(f"device: {device} ({hardware}); torch {torch.__version__}; batch {args.batch_size}, crop {args.crop}")
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in hardware), None) if device.type == "cuda" else None
    print(f"{'preset':<8} {'params':>9} {'images/s':>10} {'TFLOP/step':>11} {'TFLOP/s':>9} {'MFU':>6}")
    for preset in args.presets:
        speed, params, flops = measure(preset, device, args.batch_size, args.crop, args.steps, args.classes)
        achieved = flops * speed / args.batch_size / 1e12
        mfu = "-" if peak is None else f"{achieved / peak:.0%}"
        print(f"{preset:<8} {params / 1e6:>8.1f}M {speed:>10.1f} {flops / 1e12:>11.3f} {achieved:>9.2f} {mfu:>6}")
    print("FLOPs: matrix work of one step (forward + backward) as PyTorch's FlopCounterMode counts it; "
          "MFU = achieved / dense bf16 peak of the GPU")

if __name__ == "__main__":
    main()
