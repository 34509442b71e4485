"""The Label Masked Autoencoder (L-MAE): a ViT masked autoencoder over image + label.

Data flow (paper, Fig. 3), for an image (B, 3, H, W) in [0, 1], a label (B, H, W) of class indices
and a patch mask (B, L) with True on the hidden patches:

1. Stack Fuse: one-hot the label into N class planes (void and any value >= N give all-zero
   planes) and concatenate the normalised RGB image: an (N+3)-channel fuse map.
2. Patch embedding (a p x p convolution with stride p) plus fixed 2-D sin-cos positions, computed
   for whatever grid the input has.
3. Encoder: transformer blocks over the visible patches only.
4. Image Patch Supplement (IPS): every hidden slot gets an embedding of that patch's *image*
   pixels (plus a learned "hidden" marker), instead of MAE's blank mask token, so the decoder
   still sees what is there to be labelled.
5. Decoder: transformer blocks over all L patches, then a linear head to p*p*N logits per patch,
   rearranged to per-pixel class logits (B, N, H, W).

Neighbourhood hint (our addition, `neighbour_hint`; README "The method"): each hidden slot also
gets an embedding of the nearest-labelled-pixel fill of its patch (from the visible labels), and
the output logits get `hint_scale * one-hot(fill)` added. The model starts as the classical
nearest fill and learns from the image where to correct it: measured on CamVid, a small
CPU-trained model without the hint stays well below nearest fill.

Image branch (our addition, `image_branch`): a small U-Net over the image alone gives per-pixel
features to the pixel refiner, and in training its own class logits (an auxiliary loss on every
labelled pixel). 16 x 16 patch tokens see a thin crack as a faint linear blend; convolutions see
it: on concrete val a 0.4M-parameter U-Net trained 15 minutes on the 2-core CPU separates defect
from background pixels with a ROC AUC of 0.93, against 0.70 for the tiny L-MAE's own defect
probability on erased defects.

Samples of one batch may hide different numbers of patches: the visible sequences are padded and
the padding is excluded from attention with a key mask.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmae_repair.errors import LmaeError
from lmae_repair.neighbourhood import neighbourhood_hint

IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
HINT_SCALE_INIT = 2.0  # logit bonus of the hinted class at the start of training


@dataclass
class ModelConfig:
    """Architecture; stored in every checkpoint so the model can be rebuilt exactly."""

    num_classes: int
    patch_size: int = 16
    enc_depth: int = 6
    enc_dim: int = 256
    enc_heads: int = 8
    dec_depth: int = 4
    dec_dim: int = 192
    dec_heads: int = 6
    mlp_ratio: float = 4.0
    drop_path: float = 0.0
    image_patch_supplement: bool = True
    neighbour_hint: bool = False
    refine_channels: int = 0  # width of the pixel-level refinement convolutions; 0 = none
    image_branch: int = 0  # width of the image U-Net's first level (features for the refiner); 0 = none
    branch_reads_labels: bool = False  # the U-Net also reads the label per pixel (`LabelMAE.branch_input`)

    def to_dict(self) -> dict:
        return asdict(self)

    def __post_init__(self) -> None:
        if self.image_branch and not self.refine_channels:
            raise LmaeError("an image branch feeds the pixel refiner: it needs refine_channels > 0")
        if self.branch_reads_labels and not self.image_branch:
            raise LmaeError("branch_reads_labels needs an image branch (image_branch > 0)")
        if self.image_branch and self.patch_size % ImageBranch.MULTIPLE:
            raise LmaeError(f"an image branch needs a patch size that is a multiple of {ImageBranch.MULTIPLE}")

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise LmaeError(f"model config has unknown fields: {', '.join(sorted(unknown))}")
        return cls(**data)


PRESETS: dict[str, dict] = {
    # Fast on a 2-core CPU: 7.4M parameters for 3 classes, 8.9M for 12, 10.4M for 21.
    "tiny": dict(
        enc_depth=6, enc_dim=256, enc_heads=8, dec_depth=4, dec_dim=192, dec_heads=6, neighbour_hint=True,
        refine_channels=32,
    ),
    # The paper's model: EB=8, DB=6, ED=1440, DD=720 (head width 120 suits fused attention kernels).
    "base": dict(
        enc_depth=8, enc_dim=1440, enc_heads=12, dec_depth=6, dec_dim=720, dec_heads=6,
        drop_path=0.1, neighbour_hint=True, refine_channels=64,
    ),
}


def preset_config(name: str, num_classes: int, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise LmaeError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    values = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
    return ModelConfig(num_classes=num_classes, **values)


@lru_cache(maxsize=64)
def _sincos_2d(grid_h: int, grid_w: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positions (L, dim), as in MAE: half the channels per axis."""
    if dim % 4:
        raise LmaeError(f"embedding width {dim} must be a multiple of 4 for 2-D sin-cos positions")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
    ys, xs = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")

    def encode(pos: np.ndarray) -> np.ndarray:
        angles = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    table = np.concatenate([encode(ys), encode(xs)], axis=1)
    return torch.from_numpy(table).float()


def sincos_positions(grid_h: int, grid_w: int, dim: int, device, dtype) -> torch.Tensor:
    return _sincos_2d(grid_h, grid_w, dim).to(device=device, dtype=dtype)


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample during training."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = torch.rand(x.shape[0], 1, 1, device=x.device) >= self.rate
        return x * keep.to(x.dtype) / (1.0 - self.rate)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise LmaeError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if x.device.type == "cpu" and q.dtype == torch.bfloat16 and not torch.is_grad_enabled():
            # Measured on 2 CPU cores at these short sequences (about 200 tokens, bf16, AMD EPYC):
            # plain matrix products take half the time of scaled_dot_product_attention's CPU
            # kernel. In float32 (int8 linear layers) the kernel is faster (2-core Xeon, 8 x 6
            # heads x 210 tokens: 1.9 against 3.1 ms). The softmax runs in float32: in bf16 its
            # sums depend on how many padding keys the pass has, so a pair's label depended on
            # what shared its batch (1 pixel in 16 of 72 CamVid labels, batch size 8 against 1).
            scores = (q * (c // self.heads) ** -0.5) @ k.transpose(-1, -2)
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            out = scores.softmax(-1, dtype=torch.float32).to(v.dtype) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block (paper eq. 4-5): attention and MLP residuals with DropPath."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), attn_mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PixelRefiner(nn.Module):
    """Pixel-level correction of the logits (our addition, `refine_channels`): three small 3x3
    convolutions over [logits, image, hint] add a residual to the logits. Tokens are 16x16 pixels
    wide and the linear head cannot place class boundaries between them from the image; these
    can. The last convolution starts at zero, so training starts from the unrefined model."""

    def __init__(self, num_classes: int, channels: int, extra_channels: int = 0):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(2 * num_classes + 3 + extra_channels, channels, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=2, dilation=2),
            nn.GELU(),
            nn.Conv2d(channels, num_classes, 3, padding=1),
        )
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)

    HALO = 4  # pixels of context each output pixel reads: 1 + 2 (dilated) + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def on_windows(self, windows: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
        """The residual for (K, p + 2*HALO, p + 2*HALO, C) channels-last windows around K patches:
        (K, N, p, p), equal to `forward` on the whole tile at those patches. The convolutions run
        without padding; `inside` (K, ..., 1) is 0 where a window leaves the tile, and activations
        there are zeroed after each layer, exactly as `forward`'s zero padding sees them (only the
        windows that leave the tile are touched).

        Channels-last because PyTorch's CPU convolutions run about twice as fast on it (800
        windows, 2-core Xeon: 45 against 91 ms for the first), while its GELU is three times
        slower on a channels-last NCHW tensor than on the same memory seen as a contiguous NHWC one
        (50 against 16 ms): so activations stay (K, h, w, C) and only the convolutions see NCHW."""
        conv1, gelu, conv2, _, conv3 = self.layers
        edge = (inside == 0).flatten(1).any(1)

        def conv(x: torch.Tensor, layer: nn.Conv2d, **options) -> torch.Tensor:
            return F.conv2d(x.permute(0, 3, 1, 2), layer.weight, layer.bias, **options).permute(0, 2, 3, 1)

        def zero_outside(y: torch.Tensor, margin: int) -> torch.Tensor:
            if y.device.type != "cpu":  # a GPU multiplies them all sooner than it asks the host which
                return y * inside[:, margin:-margin, margin:-margin]
            if bool(edge.any()):
                y[edge] = y[edge] * inside[edge, margin:-margin, margin:-margin]
            return y

        y = zero_outside(gelu(conv(windows, conv1)), 1)
        y = zero_outside(gelu(conv(y, conv2, dilation=2)), 3)
        return conv(y, conv3).permute(0, 3, 1, 2)


def _conv_block(inputs: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, 3, padding=1), nn.BatchNorm2d(outputs), nn.GELU(),
        nn.Conv2d(outputs, outputs, 3, padding=1), nn.BatchNorm2d(outputs), nn.GELU(),
    )


class ImageBranch(nn.Module):
    """A small U-Net over the normalised image (`image_branch`, see the module docstring): three
    poolings, widths w, 2w, 4w, 6w; returns w features per pixel. `head` gives class logits from
    them for the auxiliary training loss only. With `label_planes`, its input also has that many
    planes of the label after the image's 3 channels (`LabelMAE.branch_input`)."""

    MULTIPLE = 8  # input sides must be multiples of 2 ** (number of poolings)

    def __init__(self, width: int, num_classes: int, label_planes: int = 0):
        super().__init__()
        widths = (width, 2 * width, 4 * width, 6 * width)
        self.down = nn.ModuleList(_conv_block(a, b) for a, b in zip((3 + label_planes,) + widths[:-1], widths))
        self.up = nn.ModuleList(_conv_block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(3)))
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, normalised: torch.Tensor) -> torch.Tensor:
        """Features (B, w, H, W). Inference on a CPU runs one image at a time: its full-resolution
        activations then stay in cache, and the U-Net ran 1.7x faster than on 16 CamVid tiles at
        once (2 cores; same outputs). Training keeps the batch, which its BatchNorms need."""
        if not self.training and normalised.device.type == "cpu" and len(normalised) > 1:
            return torch.cat([self._features(one) for one in normalised.split(1)])
        return self._features(normalised)

    def _features(self, normalised: torch.Tensor) -> torch.Tensor:
        skips = []
        x = normalised
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = block(torch.cat([F.interpolate(x, scale_factor=2.0), skip], dim=1))
        return x


def bucketed(count: int) -> int:
    """`count` rounded up to one of eight sizes per doubling (at most an eighth more) under bf16
    autocast on a CPU; `count` itself elsewhere. See `padded_rows` for why."""
    if not torch.is_autocast_enabled("cpu"):
        return count
    step = max(8, 1 << max(count.bit_length() - 4, 0))
    return -(-count // step) * step


def padded_rows(x: torch.Tensor) -> torch.Tensor:
    """`x` with rows of zeros appended up to `bucketed(len(x))` rows (the caller drops their
    results: no row's result depends on another's).

    Why: under bf16 a CPU's matrix products and convolutions run in oneDNN, which builds and keeps
    a primitive for each shape it meets, and at inference each batch holds its own number of
    visible, needed and mixed patches. Resident memory of `complete` on 1,000 different 96x96
    concrete crops grew from 420 to 721 MB (float32, with no such cache, stayed flat at 487).
    Rounding those counts (and the encoder's and decoder's token widths) up to a few sizes makes
    the shapes repeat; see benchmarks/README.md for the figures."""
    extra = bucketed(len(x)) - len(x)
    return x if extra == 0 else torch.cat([x, x.new_zeros(extra, *x.shape[1:])])


def one_hot_patch_tokens(
    weight: torch.Tensor, label: torch.Tensor, patch_size: int, used: torch.Tensor | None = None
) -> torch.Tensor:
    """What a p x p, stride-p convolution with `weight` (D, N, p, p) gives on the one-hot class
    planes of `label` (B, H, W), as tokens (B, L, D), without the bias; void and values >= N are
    all-zero planes, as in `LabelMAE.class_planes`. With `used` (B, L) bool, only the tokens it
    marks are sure to be right (on a CPU the others may skip their product, below).

    Why not the convolution: most patches of a label hold one class (72% on CamVid val), and a
    patch of class c embeds to the sum of the kernel's plane c, looked up from a table; only the
    mixed patches take a matrix product over their one-hot pixels. The convolutions on the one-hot
    planes were a fifth of the model's CPU time at inference. A GPU convolves the planes instead:
    it does that fast, and the boolean indexing would make it wait for the host."""
    d, n, p = weight.shape[0], weight.shape[1], patch_size
    if label.device.type != "cpu":
        planes = (label.unsqueeze(1) == torch.arange(n, device=label.device)[:, None, None]).to(weight.dtype)
        return F.conv2d(planes, weight, stride=p).flatten(2).transpose(1, 2)
    b, height, width = label.shape
    patches = label.reshape(b, height // p, p, width // p, p).transpose(2, 3).reshape(b, -1, p * p)
    patches = patches.clamp(0, n)  # n: void and out-of-range values; compared in the label's dtype (uint8 at inference)
    table = torch.cat([weight.sum((2, 3)).t(), weight.new_zeros(1, d)])  # (N + 1, D)
    tokens = table[patches[..., 0].long()]
    mixed = (patches != patches[..., :1]).any(-1)
    if used is not None:  # hidden patches' fuse tokens, visible patches' hint tokens: never read
        mixed &= used
    if bool(mixed.any()):
        planes = F.one_hot(patches[mixed].long(), n + 1)[..., :n].to(weight.dtype)  # (K, p*p, N)
        kernel = weight.permute(0, 2, 3, 1).reshape(d, p * p * n)  # pixel-major, like `planes`
        rows = planes.reshape(-1, p * p * n)
        tokens = tokens.index_put((mixed,), (padded_rows(rows) @ kernel.t())[: len(rows)].to(tokens.dtype))
    return tokens


def context_around(needed_grid: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, grid_h, grid_w) bool: the patches within `radius` patches (rows and columns) of a
    needed one: with a checkpoint's `context_patches` (CheckpointInfo) as `radius`, all that its
    encoder and decoder attend to at inference.

    Why: on real labels few patches need rebuilding (13% of CamVid val's tile patches), and
    tokens far from all of them barely change them; dropping those tokens saves much of the
    transformer's work. Bundled camvid family, all 101 CamVid val pairs, objects damage seeds
    0 / 1 / 2 (2026-11-25): PA-mIoU 0.582 / 0.577 / 0.569 with the whole tile, 0.581 / 0.576 /
    0.569 within 3 patches, 0.580 / 0.573 / 0.567 within 2; random patches at 0.25 / 0.5 / 0.75
    unchanged (dense damage keeps nearly every token). It is not free everywhere: the concrete
    family's objects damage (long cracks) lost 0.005 of precision within 3 patches (0.693 ->
    0.688, seed 0; 0.660 -> 0.654, seed 1), so it is set per checkpoint, after measuring, and
    is 0 (the whole tile) unless set. benchmarks/README.md for the speed."""
    grid = needed_grid[:, None].float()
    return F.max_pool2d(grid, 2 * radius + 1, stride=1, padding=radius)[:, 0] > 0


@dataclass
class WholeImageFeatures:
    """The image branch's features of whole images, held as one table of pixel rows, and where
    each tile of a pass starts in it: `forward_patches` reads its refiner windows straight from the
    table with one gather, instead of from per-tile crops (cutting, stacking and converting the
    crops of every tile was twice the copying the windows need, 0.4 s of a 14 s CamVid val run on
    2 CPU cores), whatever images the tiles come from and without asking a GPU where they are."""

    table: torch.Tensor  # (pixels of all the images, w): each image row by row, in the refiner's dtype
    starts: torch.Tensor  # (B,) long: the table row of each tile's top-left pixel
    row_lengths: torch.Tensor  # (B,) long: the width of each tile's image

    def windows(self, tile: torch.Tensor, at_y: torch.Tensor, at_x: torch.Tensor) -> torch.Tensor:
        """(K, size, size, w) features at tile pixels (`at_y` (K, size, 1), `at_x` (K, 1, size),
        within the tiles) of the tiles `tile` (K,)."""
        return self.table[self.starts[tile, None, None] + at_y * self.row_lengths[tile, None, None] + at_x]


class LabelMAE(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        p, n = config.patch_size, config.num_classes
        self.register_buffer("mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1), persistent=False)

        self.fuse_embed = nn.Conv2d(n + 3, config.enc_dim, p, stride=p)
        depth = config.enc_depth + config.dec_depth
        rates = [config.drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.encoder = nn.ModuleList(
            Block(config.enc_dim, config.enc_heads, config.mlp_ratio, rates[i])
            for i in range(config.enc_depth)
        )
        self.encoder_norm = nn.LayerNorm(config.enc_dim)
        self.encoder_to_decoder = nn.Linear(config.enc_dim, config.dec_dim)

        self.image_embed = nn.Conv2d(3, config.dec_dim, p, stride=p)  # IPS
        self.hidden_token = nn.Parameter(torch.zeros(1, 1, config.dec_dim))
        if config.neighbour_hint:
            self.hint_embed = nn.Conv2d(n, config.dec_dim, p, stride=p)
            self.hint_scale = nn.Parameter(torch.tensor(HINT_SCALE_INIT))
        self.decoder = nn.ModuleList(
            Block(config.dec_dim, config.dec_heads, config.mlp_ratio, rates[config.enc_depth + i])
            for i in range(config.dec_depth)
        )
        self.decoder_norm = nn.LayerNorm(config.dec_dim)
        self.head = nn.Linear(config.dec_dim, p * p * n)
        label_planes = n + 1 if config.branch_reads_labels else 0
        self.branch = ImageBranch(config.image_branch, n, label_planes) if config.image_branch else None
        self.refine = PixelRefiner(n, config.refine_channels, config.image_branch) if config.refine_channels else None
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.hidden_token, std=0.02)
        convs = [self.fuse_embed, self.image_embed] + ([self.hint_embed] if self.config.neighbour_hint else [])
        for conv in convs:
            nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
            nn.init.zeros_(conv.bias)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def grid(self, height: int, width: int) -> tuple[int, int]:
        p = self.config.patch_size
        if height % p or width % p:
            raise LmaeError(f"input {width}x{height} is not a multiple of the patch size {p}")
        return height // p, width // p

    def class_planes(self, label: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B, H, W) class indices -> (B, N, H, W) one-hot planes; void and values >= N: all zero.
        The planes are laid out channels-last, which the patch-embedding convolutions run about
        1.5x faster on (CPU, measured)."""
        classes = torch.arange(self.config.num_classes, device=label.device, dtype=label.dtype)
        return (label.unsqueeze(-1) == classes).to(dtype).permute(0, 3, 1, 2)

    def fuse_map(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Stack Fuse (paper eq. 1): N one-hot class planes + the normalised RGB image. The model
        embeds it through `fuse_tokens`, which gives `fuse_embed(fuse_map(...))` without building it."""
        normalised = ((image - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        return torch.cat([self.class_planes(label, image.dtype), normalised], dim=1)

    def fuse_tokens(self, image: torch.Tensor, label: torch.Tensor, used: torch.Tensor | None = None) -> torch.Tensor:
        """Patch embeddings of the fuse map (B, L, enc_dim): `fuse_embed` applied to `fuse_map`,
        computed as its image part (a convolution on the 3 image channels) plus its one-hot part
        (`one_hot_patch_tokens`), which is the same sum without convolving the class planes; only
        the tokens marked in `used` (B, L) are sure to be right, when given."""
        n, p = self.config.num_classes, self.config.patch_size
        normalised = (image - self.mean) / self.std
        weight, bias = self.fuse_embed.weight, self.fuse_embed.bias
        image_tokens = F.conv2d(normalised, weight[:, n:], bias, stride=p).flatten(2).transpose(1, 2)
        return image_tokens + one_hot_patch_tokens(weight[:, :n], label, p, used).to(image_tokens.dtype)

    def forward(
        self, image: torch.Tensor, label: torch.Tensor, mask: torch.Tensor, hint: torch.Tensor | None = None,
        with_branch_logits: bool = False, branch_label: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Per-pixel class logits (B, N, H, W); `mask` (B, L) is True on hidden patches.

        `hint` (B, H, W): the nearest-fill hint, for models with `neighbour_hint`; computed here
        from `label` and `mask` when not given (whole-image inference passes its own, cropped).
        `with_branch_logits` (training, models with an image branch): also return the branch's
        own logits (B, N, H, W) for the auxiliary loss. `branch_label`: what a branch that reads
        the labels reads (`branch_input`; default `label`).
        """
        if with_branch_logits and self.branch is None:
            raise LmaeError("this model has no image branch")
        grid_h, grid_w = self.grid(*image.shape[-2:])
        decoded, hint = self._decode(image, label, mask, hint)
        logits = self._unpatchify(self.head(decoded), grid_h, grid_w)
        hint_planes = self.class_planes(hint, logits.dtype) if hint is not None else None
        if hint_planes is not None:
            logits = logits + self.hint_scale * hint_planes
        features = None
        if self.refine is not None:
            normalised = ((image - self.mean) / self.std).to(logits.dtype)
            extra = hint_planes if hint_planes is not None else torch.zeros_like(logits)
            inputs = [logits, normalised, extra]
            if self.branch is not None:
                branch_label = label if branch_label is None else branch_label
                features = self.branch(self.branch_input(normalised, branch_label)).to(logits.dtype)
                inputs.append(features)
            logits = logits + self.refine(torch.cat(inputs, dim=1))
        if with_branch_logits:  # a branch always has a refiner (ModelConfig), so `features` is set
            return logits, self.branch.head(features)
        return logits

    def image_features(self, image: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """The image branch's features (B, w, H, W) of images (B, 3, H, W) in [0, 1], as
        `forward_patches` reads them (for models with an image branch); a branch that reads the
        labels also needs the labels (B, H, W)."""
        return self.branch(self.branch_input((image - self.mean) / self.std, label))

    def branch_input(self, normalised: torch.Tensor, label: torch.Tensor | None) -> torch.Tensor:
        """What the image branch reads: the normalised image (B, 3, H, W), and with
        `branch_reads_labels` also the label (B, H, W) per pixel: N one-hot class planes and one
        plane that is 1 where the label gives no class (void, values >= N).

        At inference that label is the one given, every annotated pixel of it, hidden patches
        included: nothing there is the answer. In training, the patches that the random,
        label-first and background-first strategies hide hold the true label, so the branch sees
        them as void (`train.branch_view`); the objects strategy's input is a damaged label like a
        given one and is seen whole.

        Why (2026-12-06): the transformer reads the labels only as 16-pixel patch tokens and the
        refiner only 4 pixels around each pixel, so nothing at pixel level could follow an
        annotated crack or border from where the annotation stops into the image. A prototype on
        concrete val (this U-Net alone, warm-started from the bundled image-only one, 20 CPU
        minutes) restored a quarter of the erased defect pixels at precision 0.60, where the
        image-only U-Net had 0.24 at 0.24 and the bundled L-MAE 0.28 at 0.35."""
        if not self.config.branch_reads_labels:
            return normalised
        if label is None:
            raise LmaeError("this model's image branch reads the labels: pass the labels")
        n = self.config.num_classes
        planes = F.one_hot(label.clamp(max=n).long(), n + 1).to(normalised.dtype).permute(0, 3, 1, 2)
        return torch.cat([normalised, planes], dim=1)

    def forward_patches(
        self, image: torch.Tensor, label: torch.Tensor, mask: torch.Tensor, needed: torch.Tensor,
        hint: torch.Tensor | None = None, features: torch.Tensor | WholeImageFeatures | None = None,
        context_radius: int = 0,
    ) -> torch.Tensor:
        """Inference: the logits of the patches marked in `needed` (B, L) only, (K, N, p, p) in
        the order of `needed.nonzero()`, equal to `forward` there.

        Only the patches that may change (hidden, holding background or void) are ever used, often
        a small share of a tile; the full-resolution work after the decoder (unpatchify, hint,
        refiner, softmax) was most of the model's time on a CPU. Each needed patch is cut with a
        HALO-pixel margin from its 3 x 3 neighbourhood of patches for the refiner, and the head
        (the widest linear layer: dec_dim -> p*p*N) runs on those neighbourhoods only.

        `features`: the image branch's features of these tiles (B, w, H, W), or of the whole
        images they were cut from (`WholeImageFeatures`), when the caller computed them on the
        whole image (`image_features`); otherwise the branch runs on each tile.

        `context_radius`: the encoder and decoder see only the patches within that many patches
        of a needed one (`context_around`; 0: the whole tile, which makes the logits equal to
        `forward`'s)."""
        b, _, height, width = image.shape
        grid_h, grid_w = self.grid(height, width)
        p, n, halo = self.config.patch_size, self.config.num_classes, PixelRefiner.HALO
        needed_grid = needed.bool().view(b, grid_h, grid_w)
        context = context_around(needed_grid, context_radius).view(b, -1) if context_radius else None
        decoded, hint = self._decode(image, label, mask, hint, None if context is None or bool(context.all()) else context)
        # the head on the patches read below (the needed ones and their neighbours), one row each,
        # plus a row of zeros for the places beyond the tile; `row_of` maps the padded grid to them
        read = F.max_pool2d(needed_grid[:, None].to(decoded.dtype), 3, stride=1, padding=1)[:, 0] > 0
        read_rows = decoded[read.view(b, -1)]
        rows = self.head(padded_rows(read_rows))[: len(read_rows)]
        rows = torch.cat([rows, rows.new_zeros(1, rows.shape[1])])
        row_of = torch.full((b, grid_h + 2, grid_w + 2), len(rows) - 1, dtype=torch.long, device=image.device)
        row_of[:, 1:-1, 1:-1][read] = torch.arange(len(rows) - 1, device=image.device)
        where = needed_grid.nonzero(as_tuple=True)
        # (K, N, p + 2*halo, p + 2*halo): the head's logits around each needed patch (zero beyond
        # the tile), gathered pixel by pixel: offset o in [-halo, p + halo) lies in neighbour
        # o // p + 1 (of the 3 x 3 around the patch), at pixel o % p of it
        offset = torch.arange(-halo, p + halo, device=image.device)
        neighbour, pixel = offset.div(p, rounding_mode="floor") + 1, offset.remainder(p)
        patch_rows = row_of[where[0][:, None, None], where[1][:, None, None] + neighbour[None, :, None],
                            where[2][:, None, None] + neighbour[None, None, :]]  # (K, size, size)
        flat = (patch_rows * (p * p) + pixel[:, None] * p + pixel[None, :]).view(-1)
        # From here on windows are laid out channels-last, (K, size, size, C): the gathers give
        # that layout, the refiner's input parts fill one buffer along the last dimension, and its
        # convolutions run about twice as fast on it (CPU, measured; see `PixelRefiner.on_windows`).
        size = p + 2 * halo
        logits = rows.view(-1, n)[flat].view(len(patch_rows), size, size, n)

        # the same windows of the tile's pixels: rows and columns (clamped), and 1 inside the tile
        span_y, span_x = where[1][:, None] * p + offset, where[2][:, None] * p + offset  # (K, size)
        inside = (((span_y >= 0) & (span_y < height))[:, :, None, None]
                  & ((span_x >= 0) & (span_x < width))[:, None, :, None]).to(logits.dtype)  # (K, size, size, 1)
        at_y, at_x = span_y.clamp(0, height - 1)[:, :, None], span_x.clamp(0, width - 1)[:, None, :]

        def gather(x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (K, size, size, C), clamped beyond the tile
            return x[where[0][:, None, None], :, at_y, at_x]

        hint_planes = None
        if hint is not None:  # no class beyond the tile
            hint_window = gather(hint[:, None])[..., 0].masked_fill(inside[..., 0] == 0, n)
            hint_planes = self.class_planes(hint_window, logits.dtype).permute(0, 2, 3, 1)
        if self.refine is None:
            if hint_planes is not None:
                logits = logits + self.hint_scale * hint_planes
            return logits[:, halo:-halo, halo:-halo].permute(0, 3, 1, 2)
        if self.branch is not None and features is None:  # the U-Net needs the whole tile's context
            features = self.image_features(image, label)
        feature_windows = None
        if isinstance(features, WholeImageFeatures):
            feature_windows = features.windows(where[0], at_y, at_x)
        elif features is not None:
            feature_windows = gather(features)
        # the refiner's input, [logits + hint, normalised image, hint planes, image features],
        # each part written straight into its channels (a concatenation of the parts was 12% of
        # the model's time on heavily damaged CamVid labels); zero beyond the tile (the
        # convolutions' padding)
        widths = [n, 3, n] + ([] if feature_windows is None else [feature_windows.shape[-1]])
        windows = logits.new_empty(*logits.shape[:3], sum(widths))
        with_hint, normalised, planes, *feature_part = windows.split(widths, dim=-1)
        if hint_planes is None:
            with_hint.copy_(logits)
            planes.zero_()
        else:
            torch.add(logits, self.hint_scale * hint_planes, out=with_hint)
            planes.copy_(hint_planes)
        torch.mul(((gather(image) - self.mean.view(-1)) / self.std.view(-1)).to(logits.dtype), inside, out=normalised)
        if feature_part:
            torch.mul(feature_windows.to(logits.dtype), inside, out=feature_part[0])
        centre = with_hint[:, halo:-halo, halo:-halo].permute(0, 3, 1, 2)
        return centre + self.refine.on_windows(padded_rows(windows), padded_rows(inside))[: len(windows)]

    def _decode(
        self, image: torch.Tensor, label: torch.Tensor, mask: torch.Tensor, hint: torch.Tensor | None,
        context: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encoder on the visible patches, IPS and hint slots, decoder on all: the decoder's
        normalised output (B, L, dec_dim), for the head, and the hint used (None without
        `neighbour_hint`). With `context` (B, L) bool, both see only the patches it marks, and
        the output is zero elsewhere."""
        b, _, height, width = image.shape
        grid_h, grid_w = self.grid(height, width)
        if mask.shape != (b, grid_h * grid_w):
            raise LmaeError(f"mask shape {tuple(mask.shape)} does not match {b}x{grid_h * grid_w} patches")
        mask = mask.bool()

        encoded_patches = ~mask if context is None else ~mask & context
        tokens = self.fuse_tokens(image, label, encoded_patches)
        # positions in float32: under bf16 autocast the residual stream then stays float32 (each
        # block adds its bf16 update onto a float32 sum), as in the usual ViT recipe
        tokens = tokens.float() + sincos_positions(grid_h, grid_w, self.config.enc_dim, tokens.device, torch.float32)
        encoded, keep = self._attend_within(tokens, encoded_patches, self.encoder)
        encoded = self.encoder_norm(encoded)

        decoded_visible = self.encoder_to_decoder(encoded)
        slots = torch.zeros(
            b, grid_h * grid_w, decoded_visible.shape[-1], device=tokens.device, dtype=decoded_visible.dtype
        )
        slots = slots.scatter(1, keep.unsqueeze(-1).expand(-1, -1, slots.shape[-1]), decoded_visible)
        hidden = self.hidden_token.to(slots.dtype).expand(b, grid_h * grid_w, -1)
        if self.config.image_patch_supplement:
            image_tokens = self.image_embed((image - self.mean) / self.std).flatten(2).transpose(1, 2)
            hidden = hidden + image_tokens.to(slots.dtype)
        if self.config.neighbour_hint:
            if hint is None:
                hint = neighbourhood_hint(label, mask, self.config.patch_size, self.config.num_classes)
            hint_tokens = one_hot_patch_tokens(self.hint_embed.weight, hint, self.config.patch_size, mask) + self.hint_embed.bias
            hidden = hidden + hint_tokens.to(slots.dtype)
        x = torch.where(mask.unsqueeze(-1), hidden, slots)
        x = x.float() + sincos_positions(grid_h, grid_w, x.shape[-1], x.device, torch.float32)
        hint = hint if self.config.neighbour_hint else None
        if context is None:
            for block in self.decoder:
                x = block(x)
            return self.decoder_norm(x), hint
        inside, kept = self._attend_within(x, context, self.decoder)
        decoded = x.new_zeros(x.shape)
        return decoded.scatter_(1, kept.unsqueeze(-1).expand_as(inside), self.decoder_norm(inside)), hint

    @staticmethod
    def _attend_within(tokens: torch.Tensor, members: torch.Tensor, blocks: nn.ModuleList) -> tuple[torch.Tensor, torch.Tensor]:
        """Run `blocks` on the tokens (B, L, C) that `members` (B, L) marks (the visible ones for
        the encoder); returns their outputs and patch indices.

        Members are moved to the front (stable, so in patch order); rows with fewer members than
        the longest row are padded with other tokens, which attention ignores.
        """
        counts = members.sum(1)
        width = min(bucketed(max(int(counts.max()), 1)), members.shape[1])
        keep = torch.argsort((~members).to(torch.int8), dim=1, stable=True)[:, :width]
        x = torch.gather(tokens, 1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        attn_mask = None
        if int(counts.min()) < width:
            valid = torch.arange(width, device=members.device).unsqueeze(0) < counts.unsqueeze(1)
            valid[:, 0] = True  # a row with no member still needs one key (its output is unused)
            attn_mask = valid[:, None, None, :]
        for block in blocks:
            x = block(x, attn_mask)
        return x, keep

    def _unpatchify(self, logits: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        b, p, n = logits.shape[0], self.config.patch_size, self.config.num_classes
        x = logits.view(b, grid_h, grid_w, p, p, n).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, n, grid_h * p, grid_w * p)
