"""Training throughput of the L-MAE presets (images/s), on random 224x224 crops.

Run by hand: `python benchmarks/train_speed.py [--presets tiny base] [--device cuda] [--steps 20]`.
It times full training steps (masking, forward, weighted loss, backward, Adam) after warm-up,
with bf16 autocast on GPU as `lmae-repair train` uses, and prints one row per preset.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from lmae_repair.losses import lmae_loss
from lmae_repair.masking import background_ratio, expand_patch_mask, mixed_training_mask
from lmae_repair.model import LabelMAE, preset_config


def measure(preset: str, device: torch.device, batch: int, crop: int, steps: int, classes: int) -> tuple[float, int]:
    torch.manual_seed(0)
    model = LabelMAE(preset_config(preset, classes)).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)
    image = torch.rand(batch, 3, crop, crop, device=device)
    label = torch.randint(0, classes + 1, (batch, crop, crop), device=device)
    p = model.config.patch_size
    grid = (crop // p, crop // p)

    def step() -> None:
        mask, _ = mixed_training_mask(background_ratio(label, p, 0, classes), 0.5)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(image, label, mask)
        loss = lmae_loss(logits, label, None, expand_patch_mask(mask, grid, p))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start), model.num_parameters()


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
    print(f"{'preset':<8} {'params':>9} {'images/s':>10}")
    for preset in args.presets:
        speed, params = measure(preset, device, args.batch_size, args.crop, args.steps, args.classes)
        print(f"{preset:<8} {params / 1e6:>8.1f}M {speed:>10.1f}")


if __name__ == "__main__":
    main()
