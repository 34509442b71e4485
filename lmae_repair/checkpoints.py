"""Checkpoints: safetensors weights with the JSON metadata needed to trust and use them.

The safetensors header carries `{"format": "lmae-repair", "format_version": "1", "lmae": <json>}`;
the JSON holds the architecture, mask ratio, label space, a training summary, the validation
PA-mIoU, the package version, for a model with an image branch the activation ranges its int8
U-Net needs (quantise.py), and how routing may use it: the other mask ratios it serves and the
kind of gap it is for (repair.py). Loading rebuilds the model from that JSON and checks that every
tensor is present with the right shape, so a corrupt or mismatched file is refused with a one-line
message rather than a traceback.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from lmae_repair import __version__
from lmae_repair.data import atomic_write
from lmae_repair.errors import LmaeError
from lmae_repair.labelspace import LabelSpace
from lmae_repair.model import LabelMAE, ModelConfig
from lmae_repair.quantise import union

FORMAT = "lmae-repair"
FORMAT_VERSION = "1"
GAP_KINDS = ("any", "objects")  # repair.py: which gaps a checkpoint is for


@dataclass
class CheckpointInfo:
    """Everything a checkpoint says about itself, besides the weights."""

    model: ModelConfig
    mask_ratio: float
    label_space: LabelSpace
    training: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    package_version: str = __version__
    int8_calibration: list = field(default_factory=list)  # image branch activation ranges, see quantise.py
    # Routing (repair.py). The mask ratio is not part of the network, so one file may serve the
    # routing slots of several ratios (the family then stores its weights once); and a file may
    # be meant only for gaps whose border follows the image's edges ("objects": objects left
    # unlabelled) rather than for any gap.
    serve_ratios: list = field(default_factory=list)  # mask ratios served besides mask_ratio
    gap_kind: str = "any"
    # Offsets added to the log-probabilities before choosing a class (class_bias.py); empty: none.
    class_bias: list = field(default_factory=list)
    # Log-probability bonuses [down the columns, along the rows] for the class found on both sides
    # of a gap (continuation.py), tuned with the offsets; empty: none.
    continuation: list = field(default_factory=list)
    # Inference: the encoder and decoder attend only within this many patches of the patches
    # being rebuilt (model.context_around; faster on sparse gaps); 0: the whole tile, as trained.
    context_patches: int = 0

    def to_json(self) -> str:
        return json.dumps(
            {
                "model": self.model.to_dict(),
                "mask_ratio": self.mask_ratio,
                "label_space": self.label_space.to_dict(),
                "training": self.training,
                "validation": self.validation,
                "package_version": self.package_version,
                "int8_calibration": self.int8_calibration,
                "serve_ratios": self.serve_ratios,
                "gap_kind": self.gap_kind,
                "class_bias": self.class_bias,
                "continuation": self.continuation,
                "context_patches": self.context_patches,
            }
        )

    @property
    def tile(self) -> int:
        """The side of the tiles inference runs in: the training crop, so that the model sees
        only positions and sequence lengths it was trained on."""
        return int(self.training.get("crop", 224))

    @property
    def slot_ratios(self) -> list[float]:
        """Every mask ratio this checkpoint serves in routing, its own first."""
        return [self.mask_ratio] + [r for r in self.serve_ratios if r != self.mask_ratio]

    @classmethod
    def from_json(cls, text: str) -> "CheckpointInfo":
        data = json.loads(text)
        if not isinstance(data, dict):
            raise LmaeError(f"a JSON {type(data).__name__}, not an object")
        for key in ("model", "label_space", "training", "validation"):  # a hand-edited file: say which, not "'list' has no .get"
            if not isinstance(data.get(key, {}), dict):
                raise LmaeError(f"{key} is {json.dumps(data[key])[:40]}, not an object")
        gap_kind = data.get("gap_kind", "any")
        if gap_kind not in GAP_KINDS:
            raise LmaeError(f"gap_kind {gap_kind!r} is not one of {', '.join(GAP_KINDS)}")
        info = cls(
            model=ModelConfig.from_dict(data["model"]),
            mask_ratio=float(data["mask_ratio"]),
            label_space=LabelSpace.from_dict(data["label_space"]),
            training=data.get("training", {}),
            validation=data.get("validation", {}),
            package_version=data.get("package_version", "unknown"),
            int8_calibration=data.get("int8_calibration", []),
            serve_ratios=[float(r) for r in data.get("serve_ratios", [])],
            gap_kind=gap_kind,
            class_bias=[float(b) for b in data.get("class_bias", [])],
            continuation=[float(b) for b in data.get("continuation", [])],
            context_patches=int(data.get("context_patches", 0)),
        )
        if any(not 0.0 < ratio <= 1.0 for ratio in info.slot_ratios):  # routing would hide more patches than a tile has
            raise LmaeError(f"mask ratios must be in (0, 1], got {', '.join(map(str, info.slot_ratios))}")
        if info.context_patches < 0:
            raise LmaeError(f"context_patches must be 0 or more, got {info.context_patches}")
        if info.class_bias and len(info.class_bias) != info.label_space.num_classes:
            raise LmaeError(f"class_bias has {len(info.class_bias)} values for {info.label_space.num_classes} classes")
        if info.continuation and len(info.continuation) != 2:
            raise LmaeError(f"continuation has {len(info.continuation)} values, not 2 (down the columns, along the rows)")
        return info


def strict_json(value) -> str:
    """`value` as strict JSON, each NaN or infinity (a PA-mIoU of nothing, an overflowed loss)
    as null: bare NaN is not JSON, and strict readers refused the whole of history.jsonl or of
    `inspect --json`. The checkpoint's own metadata keeps NaN (its readers take it back as such)."""
    return json.dumps(finite_or_null(value), allow_nan=False)


def finite_or_null(value):
    """`value` with each non-finite float, however deep in lists and dicts, as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    return value


def save_checkpoint(path: Path, model: LabelMAE, info: CheckpointInfo, half: bool = False) -> None:
    """Write weights + metadata atomically; `half` stores float16 weights (half the size)."""
    dtype = torch.float16 if half else torch.float32
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "lmae": info.to_json()}
    payload = safetensors_bytes(tensors, metadata=metadata)
    atomic_write(Path(path), lambda f: f.write(payload))


def offsets_text(names: list[str], bias: list[float], nonzero_only: bool = False) -> str:
    """A checkpoint's class offsets (`lmae-repair tune`) in words, one per class (`nonzero_only`:
    those tuning moved, as its result lists them)."""
    return ", ".join(f"{name} {b:+.1f}" for name, b in zip(names, bias) if b or not nonzero_only)


def continuation_text(bonus: list[float]) -> str:
    """The continuation bonuses (continuation.py) in words; "none" without any."""
    if not any(bonus):
        return "none"
    return ", ".join(f"{direction} {b:+.1f}" for direction, b in zip(("down columns", "along rows"), bonus) if b)


def read_info(path: Path) -> CheckpointInfo:
    """The metadata of a checkpoint, without loading its weights."""
    metadata, _ = _open(Path(path), load_tensors=False)
    return metadata


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[LabelMAE, CheckpointInfo]:
    """Rebuild the model described by a checkpoint, in eval mode, with its weights."""
    path = Path(path)
    info, tensors = _open(path, load_tensors=True)
    model = LabelMAE(info.model)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise LmaeError(
            f"{path}: weights do not match the architecture in its metadata "
            f"(missing: {', '.join(missing[:3]) or 'none'}; unexpected: {', '.join(unexpected[:3]) or 'none'})"
        )
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise LmaeError(
                f"{path}: tensor {name} has shape {tuple(tensor.shape)}, expected {tuple(expected[name].shape)}"
            )
    model.load_state_dict({k: v.float() for k, v in tensors.items()})
    return model.to(device).eval(), info


def checkpoints_in_folder(folder: Path) -> list[Path]:
    """The checkpoint files a folder stands for (`--models FOLDER`): in a training run's ratio
    folder its best.safetensors (not last.safetensors nor the kept epochs), elsewhere every
    .safetensors file but hidden ones: a folder zipped on a Mac holds an AppleDouble
    `._mask-0.25.safetensors` beside each file (in `__MACOSX/` or in place), which stopped the
    run as a corrupt checkpoint."""
    found = sorted(f for f in folder.rglob("*.safetensors") if not any(part.startswith(".") for part in f.relative_to(folder).parts))
    return [f for f in found if f.name == "best.safetensors" or not (f.parent / "best.safetensors").exists()]


def not_a_checkpoint_file(path: Path) -> str:
    """Why `path` names no checkpoint file, with the files meant where it is a run or family
    folder or a bundled family's name (which --models takes, but --init needs one file)."""
    from lmae_repair.families import bundled_families

    if path.is_symlink() and not path.exists():  # a file of a Hub download whose blob was removed from the cache
        from lmae_repair.hub import cache_folder_name, cached_repo_of

        repo = cached_repo_of(path)
        again = (f" (the Hugging Face cache's copy of {repo} is damaged: delete its {cache_folder_name(repo)} "
                 "folder there and download it again)") if repo else ""
        return f"a link to {os.readlink(path)}, which does not exist{again}"
    folder = path if path.is_dir() else None if path.exists() or len(path.parts) > 1 else bundled_families().get(str(path))
    if folder is None:
        return "no such checkpoint file"
    files = checkpoints_in_folder(folder)
    if not files:
        return "a folder, with no .safetensors checkpoint in it"
    shown = ", ".join(str(f) for f in files[:4]) + (", ..." if len(files) > 4 else "")
    kind = "a folder" if path.is_dir() else "a bundled family"
    return f"{kind}, not a checkpoint file: name one of its checkpoints ({shown})"


def unreadable_file(path: Path, exc: Exception) -> str:
    """Why safetensors could not open `path`, in the user's terms where its first bytes say what
    it is: a PyTorch file (torch.save, such as a run's state.pt or a .pt renamed .safetensors)
    and an empty file read as "header too large" and "header too small"."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        head = b"?"
    if not head:
        return "an empty file (0 bytes), not a checkpoint"
    if head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        # torch.save's zip archive, or a bare pickle (its protocol after the marker)
        state = "; a training run's state.pt: give the best.safetensors beside it" if path.name == "state.pt" else ""
        return f"a PyTorch file (torch.save), not a safetensors checkpoint of lmae-repair{state}"
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "not fully covered" in reason:  # an interrupted download or copy
        return f"truncated: shorter than its header says ({path.stat().st_size:,} bytes); copy or download it again"
    return f"not a readable safetensors checkpoint ({reason[:150]})"


def _open(path: Path, load_tensors: bool) -> tuple[CheckpointInfo, dict[str, torch.Tensor]]:
    if not path.is_file():
        raise LmaeError(f"{path}: {not_a_checkpoint_file(path)}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()} if load_tensors else {}
    except Exception as exc:
        raise LmaeError(f"{path}: {unreadable_file(path, exc)}") from None
    if metadata.get("format") != FORMAT or "lmae" not in metadata:
        raise LmaeError(f"{path}: safetensors file without lmae-repair metadata (not an L-MAE checkpoint)")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise LmaeError(
            f"{path}: checkpoint format version {metadata.get('format_version')} is not supported "
            f"(this lmae-repair {__version__} reads version {FORMAT_VERSION})"
        )
    try:
        info = CheckpointInfo.from_json(metadata["lmae"])
    except LmaeError as exc:
        raise LmaeError(f"{path}: invalid metadata: {exc}{written_by_newer(metadata['lmae'])}") from None
    except KeyError as exc:
        raise LmaeError(f"{path}: invalid metadata: it has no {exc}{written_by_newer(metadata['lmae'])}") from None
    except (ValueError, TypeError) as exc:
        raise LmaeError(f"{path}: invalid metadata ({type(exc).__name__}: {exc}){written_by_newer(metadata['lmae'])}") from None
    return info, tensors


def written_by_newer(text: str) -> str:
    """Where metadata this version cannot read was written by a newer one, the words saying so
    (" (written by lmae-repair X, newer than this Y: upgrade ...)"), else "". A field a newer version added was refused as
    "model config has unknown fields: future_field", read as a damaged file rather than as a
    reason to upgrade. Versions are compared as versions (0.10.0 is newer than 0.9.0)."""
    from packaging.version import InvalidVersion, Version

    try:
        written = json.loads(text).get("package_version")
        newer = Version(str(written)) > Version(__version__)
    except (ValueError, AttributeError, InvalidVersion):  # unreadable JSON, not an object, or no version
        return ""
    return f" (written by lmae-repair {written}, newer than this {__version__}: upgrade lmae-repair to read it)" if newer else ""


def model_differences(other: CheckpointInfo, first: CheckpointInfo) -> dict[str, str]:
    """What keeps two checkpoints from being one model's, each with its values (`other`'s first):
    the refusal said "architecture, mask ratio differ" and left the user to inspect both files."""
    differs = {}
    if other.model != first.model:
        theirs, ours = vars(other.model), vars(first.model)
        differs["architecture"] = "; ".join(f"{name} {theirs[name]} vs {ours[name]}" for name in ours if theirs[name] != ours[name])
    if other.mask_ratio != first.mask_ratio:
        differs["mask ratio"] = f"mask ratio {other.mask_ratio:g} vs {first.mask_ratio:g}"
    if not (other.label_space.same_classes(first.label_space) and other.label_space.same_names(first.label_space)):
        differs["label space"] = f"{other.label_space.describe()} vs {first.label_space.describe()}"
    if other.gap_kind != first.gap_kind:
        differs["kind of gap (inspect: gaps)"] = f"{other.gap_kind} gaps vs {first.gap_kind} gaps"
    if other.tile != first.tile:
        differs["training crop (the tiles inference runs in)"] = f"crop {other.tile} vs {first.tile}"
    return differs


def average_checkpoints(paths: list[Path]) -> tuple[LabelMAE, CheckpointInfo]:
    """The element-wise mean of the weights of checkpoints of one model (same architecture, label
    space and mask ratio), e.g. the epochs of one run. Its int8 activation ranges cover those of
    all the checkpoints (`quantise.union`).

    Why: trained at a constant learning rate on little data, a small L-MAE swings from epoch to
    epoch (between filling a hole with its surroundings and guessing the object under it); the
    average of many epochs is better than any one of them picked by a noisy validation figure
    (the bundled camvid 0.25 model, see models/camvid/README.md). The result carries the last
    checkpoint's training record (its epoch count and training time cover the whole run), the
    averaged files under training["averaged_from"], and no validation figures: those measured one
    epoch, not the average (measure it with `lmae-repair evaluate`)."""
    if not paths:
        raise LmaeError("no checkpoints to average")
    model, info = load_checkpoint(paths[0])
    calibrations = [info.int8_calibration]
    total = {name: tensor.double() for name, tensor in model.state_dict().items()}
    for path in paths[1:]:
        other, other_info = load_checkpoint(path)
        differs = model_differences(other_info, info)
        if differs:
            raise LmaeError(f"{path}: {', '.join(differs)} differ{'s' if len(differs) == 1 else ''} from {paths[0]} "
                            f"({'; '.join(differs.values())}); only checkpoints of one model can be averaged")
        info.training = other_info.training
        calibrations.append(other_info.int8_calibration)
        for name, tensor in other.state_dict().items():
            total[name] += tensor.double()
    model.load_state_dict({name: (tensor / len(paths)).float() for name, tensor in total.items()})
    info.training = {**info.training, "averaged_from": [str(p) for p in paths]}
    info.validation = {}
    info.class_bias = []  # tuned for other weights: tune the average again (class_bias.py)
    info.continuation = []
    info.int8_calibration = union(calibrations)
    return model, info
