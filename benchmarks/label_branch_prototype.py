"""Prototype behind `train --branch-reads-labels` (README "The method"): does a U-Net that reads
the image AND the damaged label restore missed concrete defects better than the image-only
branch? The bundled concrete 0.75 file's U-Net, warm-started, its extra input planes (one-hot
label: background, crack, spalling, void) at zero; trained alone on labels with half (or none,
or all) of their small defects erased to background, its loss on the damaged label's background
pixels only. Then scored on concrete val with the objects damage (seed 0) as `evaluate` words it:
restored, precision of changed pixels, intact pixels changed, at several confidence thresholds.

    python benchmarks/label_branch_prototype.py image 0      # the bundled image-only head, untrained
    python benchmarks/label_branch_prototype.py labels 20    # reading the labels, 20 minutes' training

2026-12-06, 2-core AMD EPYC: image-only at 0.7: restored 0.238, precision 0.237, intact 1.24%;
reading labels after 20 minutes (700 steps of 16) at 0.5: 0.252, 0.600, 0.21%."""
import sys
def usage_wanted(args):  # --help or no arguments crashed with IndexError, after loading torch
    try:
        return args[1] not in ('image', 'labels') or float(args[2]) < 0
    except (IndexError, ValueError):
        return True
if usage_wanted(sys.argv):
    helped = len(sys.argv) > 1 and sys.argv[1] in ('-h', '--help')
    print(__doc__ + '\n\n    usage: label_branch_prototype.py image|labels MINUTES [CONCRETE_VOC_DIR]',
          file=sys.stdout if helped else sys.stderr)
    sys.exit(0 if helped else 2)
import time, numpy as np, torch, torch.nn as nn, torch.nn.functional as F
from PIL import Image
from lmae_repair.checkpoints import load_checkpoint
from lmae_repair.masking import erase_objects
torch.set_num_threads(2); torch.manual_seed(0)
root = sys.argv[3] if len(sys.argv) > 3 else '../shared/data/concrete-voc'
def load(split):
    ids = open(f'{root}/ImageSets/Segmentation/{split}.txt').read().split()
    ims = np.stack([np.array(Image.open(f'{root}/JPEGImages/{i}.jpg').convert('RGB')) for i in ids])
    labs = np.stack([np.array(Image.open(f'{root}/SegmentationClass/{i}.png')) for i in ids])
    return ims, labs
model, info = load_checkpoint('models/concrete/mask-0.75.safetensors')
space = info.label_space
branch = model.branch.float()
USE_LABELS = sys.argv[1] == 'labels'
MINUTES = float(sys.argv[2])
N = 3
first = branch.down[0][0]
if USE_LABELS:
    new = nn.Conv2d(3 + N + 1, first.out_channels, 3, padding=1)
    with torch.no_grad():
        new.weight.zero_(); new.weight[:, :3] = first.weight; new.bias.copy_(first.bias)
    branch.down[0][0] = new
mean, std = model.mean, model.std
def inputs(img_u8, damaged):
    x = (torch.from_numpy(img_u8).permute(0, 3, 1, 2).float() / 255 - mean) / std
    if not USE_LABELS: return x
    d = torch.from_numpy(damaged).long()
    planes = F.one_hot(d.clamp(max=N), N + 1).permute(0, 3, 1, 2).float()  # last plane = void
    return torch.cat([x, planes], 1)
def damage(labs, rng, share=0.5):
    out = labs.copy(); er = np.zeros(labs.shape, bool)
    for k in range(len(labs)):
        e = erase_objects(labs[k], space, share, 0.05 * labs[k].size, rng)
        out[k][e] = 0; er[k] = e
    return out, er
def forward(x): return branch.head(branch._features(x))
tr_i, tr_l = load('train'); va_i, va_l = load('val')
print('loaded', tr_i.shape, va_i.shape, flush=True)
if MINUTES > 0:
    opt = torch.optim.AdamW(branch.parameters(), lr=3e-4 if USE_LABELS else 1e-4, weight_decay=1e-4)
    rng = np.random.default_rng(1); t0 = time.time(); step = 0
    while time.time() - t0 < MINUTES * 60:
        branch.train()
        idx = rng.choice(len(tr_i), 16, replace=False)
        im, lb = tr_i[idx].copy(), tr_l[idx].copy()
        if rng.random() < 0.5: im, lb = im[:, :, ::-1].copy(), lb[:, :, ::-1].copy()
        if rng.random() < 0.5: im, lb = im[:, ::-1].copy(), lb[:, ::-1].copy()
        dmg, er = damage(lb, rng, share=rng.choice([0.0, 0.5, 0.5, 1.0]))
        target = torch.from_numpy(lb).long(); target[target >= N] = -100
        if USE_LABELS:
            target[torch.from_numpy(dmg != 0)] = -100   # only background pixels of the damaged label are decisions
        loss = F.cross_entropy(forward(inputs(im, dmg)), target, ignore_index=-100)
        opt.zero_grad(); loss.backward(); opt.step(); step += 1
        if step % 20 == 0: print(f'{time.time()-t0:.0f}s step {step} loss {loss.item():.4f}', flush=True)
    pass
# evaluation: objects damage on val, seed 0; and intact val labels
branch.eval()
rng = np.random.default_rng(0)
dmg, er = damage(va_l, rng)
probs_d, probs_i = [], []
with torch.no_grad():
    for s in range(0, len(va_i), 16):
        probs_d.append(forward(inputs(va_i[s:s+16], dmg[s:s+16])).softmax(1))
        probs_i.append(forward(inputs(va_i[s:s+16], va_l[s:s+16])).softmax(1))
pd, pi = torch.cat(probs_d).numpy(), torch.cat(probs_i).numpy()
for t in (0.5, 0.7, 0.8, 0.9, 0.95):
    def repaired(p, given):
        cls = p.argmax(1); conf = p.max(1)
        change = (given == 0) & (cls > 0) & (conf >= t)
        out = given.copy(); out[change] = cls[change]; return out, change
    out, ch = repaired(pd, dmg)
    restored = (out[er] == va_l[er]).mean()
    prec = (out[ch] == va_l[ch]).mean() if ch.any() else float('nan')
    outi, chi = repaired(pi, va_l)
    print(f't={t}: restored {restored:.3f} precision {prec:.3f} changed {ch.sum()} intact changed {chi.mean()*100:.2f}%', flush=True)
