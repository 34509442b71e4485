import pytest
import torch

from lmae_repair.errors import LmaeError
from lmae_repair.model import Attention, LabelMAE, ModelConfig, one_hot_patch_tokens, preset_config

SMALL = dict(patch_size=8, enc_depth=2, enc_dim=64, enc_heads=4, dec_depth=2, dec_dim=32, dec_heads=4)


def small_model(**overrides) -> LabelMAE:
    torch.manual_seed(0)
    return LabelMAE(ModelConfig(num_classes=5, **{**SMALL, **overrides})).eval()


def inputs(batch: int, height: int, width: int, patch: int = 8):
    image = torch.rand(batch, 3, height, width)
    label = torch.randint(0, 6, (batch, height, width))  # 5 = void
    patches = (height // patch) * (width // patch)
    mask = torch.zeros(batch, patches, dtype=torch.bool)
    mask[:, : patches // 2] = True
    return image, label, mask


@pytest.mark.parametrize("height,width", [(32, 32), (48, 80)])
def test_logits_have_one_plane_per_class_at_input_size(height, width):
    model = small_model()
    logits = model(*inputs(2, height, width))
    assert logits.shape == (2, 5, height, width)
    assert torch.isfinite(logits).all()


def test_samples_may_hide_different_numbers_of_patches():
    model = small_model()
    image, label, mask = inputs(3, 32, 32)
    mask[1] = False  # nothing hidden
    mask[2] = True  # everything hidden
    together = model(image, label, mask)
    for i in range(3):
        alone = model(image[i : i + 1], label[i : i + 1], mask[i : i + 1])
        assert torch.allclose(together[i], alone[0], atol=1e-4)


def patch_pixels(index: int, grid_w: int, patch: int):
    row, col = divmod(index, grid_w)
    return slice(row * patch, (row + 1) * patch), slice(col * patch, (col + 1) * patch)


def test_image_patch_supplement_feeds_the_image_of_hidden_patches():
    model = small_model()
    image, label, mask = inputs(1, 32, 32)
    hidden = 3  # hidden: mask[:, :8] is True
    ys, xs = patch_pixels(hidden, 4, 8)
    changed = image.clone()
    changed[0, :, ys, xs] = 1.0 - changed[0, :, ys, xs]
    before, after = model(image, label, mask), model(changed, label, mask)
    assert (before[0, :, ys, xs] - after[0, :, ys, xs]).abs().max() > 1e-3


def test_without_ips_the_image_of_hidden_patches_is_never_seen():
    model = small_model(image_patch_supplement=False)
    image, label, mask = inputs(1, 32, 32)
    ys, xs = patch_pixels(3, 4, 8)
    changed = image.clone()
    changed[0, :, ys, xs] = 1.0 - changed[0, :, ys, xs]
    assert torch.allclose(model(image, label, mask), model(changed, label, mask), atol=1e-6)


def test_labels_of_hidden_patches_do_not_leak_into_the_output():
    model = small_model()
    image, label, mask = inputs(1, 32, 32)
    ys, xs = patch_pixels(2, 4, 8)
    changed = label.clone()
    changed[0, ys, xs] = (changed[0, ys, xs] + 1) % 5
    assert torch.allclose(model(image, label, mask), model(image, changed, mask), atol=1e-6)


def test_visible_labels_do_change_the_output():
    model = small_model()
    image, label, mask = inputs(1, 32, 32)
    ys, xs = patch_pixels(12, 4, 8)  # visible
    changed = label.clone()
    changed[0, ys, xs] = (changed[0, ys, xs] + 1) % 5
    assert not torch.allclose(model(image, label, mask), model(image, changed, mask), atol=1e-4)


def test_input_not_a_multiple_of_the_patch_size_is_refused():
    model = small_model()
    with pytest.raises(LmaeError, match="multiple of the patch size"):
        model(torch.rand(1, 3, 30, 32), torch.zeros(1, 30, 32, dtype=torch.long), torch.zeros(1, 12, dtype=torch.bool))


def test_presets_tiny_is_small_and_base_has_the_paper_dimensions():
    with torch.device("meta"):
        tiny = LabelMAE(preset_config("tiny", 21))
        base = LabelMAE(preset_config("base", 21))
    assert tiny.num_parameters() < 12_000_000
    cfg = base.config
    assert (cfg.enc_depth, cfg.dec_depth, cfg.enc_dim, cfg.dec_dim) == (8, 6, 1440, 720)
    with pytest.raises(LmaeError):
        preset_config("huge", 21)


@pytest.mark.parametrize("hint,refine,branch,reads_labels", [
    (True, 4, 0, False), (False, 4, 0, False), (True, 0, 0, False), (True, 4, 4, False), (True, 4, 4, True),
])
def test_forward_patches_equals_forward_on_the_needed_patches(hint, refine, branch, reads_labels):
    """Inference computes only the patches it will use: the same logits there, image borders and
    corners included (the refiner's margin leaves the tile)."""
    model = small_model(neighbour_hint=hint, refine_channels=refine, image_branch=branch, branch_reads_labels=reads_labels)
    if refine:  # a trained refiner is not zero
        for layer in model.refine.layers:
            if isinstance(layer, torch.nn.Conv2d):
                torch.nn.init.normal_(layer.weight, std=0.2)
    image, label, mask = inputs(2, 32, 48)
    needed = mask & (torch.rand(mask.shape) < 0.6)
    needed[:, [0, 5, 18, 23]] = True  # the four corners of the 4 x 6 grid
    mask |= needed
    with torch.no_grad():
        full = model(image, label, mask)
        part = model.forward_patches(image, label, mask, needed, context_radius=0)
    by_patch = full.view(2, 5, 4, 8, 6, 8).permute(0, 2, 4, 1, 3, 5)[needed.view(2, 4, 6)]
    assert part.shape == by_patch.shape
    assert torch.allclose(part, by_patch, atol=1e-5)


def test_forward_patches_attends_only_within_the_context_of_the_needed_patches():
    """Inference drops the tokens farther than `context_radius` patches from every needed patch
    (model.context_around): what lies there no longer changes the rebuilt patches; the whole
    tile (radius 0) still does."""
    model = small_model(neighbour_hint=True, refine_channels=4)
    image, label, mask = inputs(2, 64, 96)  # 8 x 12 patches of 8, the first half hidden
    needed = torch.zeros_like(mask)
    needed[:, [0, 13]] = True  # patches (0, 0) and (1, 1): context within 1 patch is rows 0-2, columns 0-2
    far_rows, far_cols = slice(40, 64), slice(48, 96)  # patch rows 5-7, columns 6-11: visible, far away
    changed_image, changed_label = image.clone(), label.clone()
    changed_image[:, :, far_rows, far_cols] = 1.0 - changed_image[:, :, far_rows, far_cols]
    changed_label[:, far_rows, far_cols] = (changed_label[:, far_rows, far_cols] + 1) % 5
    with torch.no_grad():
        near = [model.forward_patches(im, lab, mask, needed, context_radius=1) for im, lab in ((image, label), (changed_image, changed_label))]
        whole = [model.forward_patches(im, lab, mask, needed, context_radius=0) for im, lab in ((image, label), (changed_image, changed_label))]
    assert torch.allclose(near[0], near[1], atol=1e-6)
    assert not torch.allclose(whole[0], whole[1], atol=1e-4)
    assert not torch.allclose(near[0], whole[0], atol=1e-4)


def test_forward_patches_runs_under_bf16_autocast_as_forward_does():
    """bf16 inference (a GPU, CPUs with native bf16): the same patches, to bf16 rounding."""
    model = small_model(neighbour_hint=True, refine_channels=4, image_branch=4)
    for layer in model.refine.layers:
        if isinstance(layer, torch.nn.Conv2d):
            torch.nn.init.normal_(layer.weight, std=0.2)
    image, label, mask = inputs(2, 32, 48)
    needed = mask & (torch.rand(mask.shape) < 0.6)
    needed[:, [0, 5, 18, 23]] = True
    mask |= needed
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        full = model(image, label, mask).float()
        part = model.forward_patches(image, label, mask, needed).float()
    by_patch = full.view(2, 5, 4, 8, 6, 8).permute(0, 2, 4, 1, 3, 5)[needed.view(2, 4, 6)]
    assert float((part - by_patch).abs().max()) < 0.1 * float(by_patch.abs().max())
    assert (part.argmax(1) == by_patch.argmax(1)).float().mean() > 0.95


def test_cpu_bf16_inference_attention_matches_the_training_kernel():
    """Under bf16 on a CPU, inference's attention is plain matrix products (faster there than
    PyTorch's kernel); the masked rows must come out as the kernel gives them."""
    model = small_model()
    image, label, mask = inputs(3, 32, 32)
    mask[1, :10] = False  # rows with different numbers of visible patches: padded attention
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            fast = model(image, label, mask).float()
        exact = model(image, label, mask).detach().float()  # gradients on: scaled_dot_product_attention
    assert torch.allclose(fast, exact, atol=0.05), float((fast - exact).abs().max())
    assert float((fast - exact).abs().mean()) < 0.01


def test_the_image_branch_changes_the_output_and_gives_its_own_logits():
    plain, branched = small_model(refine_channels=4), small_model(refine_channels=4, image_branch=4)
    torch.nn.init.normal_(branched.refine.layers[-1].weight, std=0.2)  # a trained refiner is not zero
    image, label, mask = inputs(2, 32, 48)
    logits, branch_logits = branched(image, label, mask, with_branch_logits=True)
    assert logits.shape == branch_logits.shape == (2, 5, 32, 48)
    with torch.no_grad():
        before = branched(image, label, mask)
        branched.refine.layers[0].weight[:, -4:] = 0  # the refiner no longer reads the branch
        assert (branched(image, label, mask) - before).abs().amax() > 1e-3
    with torch.no_grad():  # inference on a CPU runs the U-Net one image at a time: same features
        normalised = (image - branched.mean) / branched.std
        torch.testing.assert_close(branched.branch(normalised), branched.branch._features(normalised), atol=1e-5, rtol=1e-4)
    with pytest.raises(LmaeError):
        plain(image, label, mask, with_branch_logits=True)
    with pytest.raises(LmaeError):
        ModelConfig(num_classes=5, image_branch=4)  # without a refiner the features go nowhere


def test_a_branch_that_reads_labels_gets_one_plane_per_class_and_one_for_no_class():
    model = small_model(refine_channels=4, image_branch=4, branch_reads_labels=True)
    with pytest.raises(LmaeError, match="image branch"):
        ModelConfig(num_classes=5, refine_channels=4, branch_reads_labels=True)
    image, label, mask = inputs(1, 32, 32)
    label[0, 0, :4] = 255  # void, whatever its value
    normalised = (image - model.mean) / model.std
    planes = model.branch_input(normalised, label)
    assert planes.shape == (1, 3 + 5 + 1, 32, 32)
    assert torch.equal(planes[:, :3], normalised) and torch.equal(planes[:, 3:].sum(1), torch.ones(1, 32, 32))
    assert torch.equal(planes[0, 3:].argmax(0), label[0].clamp(max=5))  # void (5 or 255): the last plane
    features = model.image_features(image, label)
    changed = label.clone()
    changed[0, :8, :8] = (changed[0, :8, :8] + 1) % 5
    assert not torch.allclose(model.image_features(image, changed), features, atol=1e-4)
    torch.nn.init.normal_(model.refine.layers[-1].weight, std=0.2)  # a trained refiner reads the features
    with torch.no_grad():  # the branch reads `branch_label` where training gives one, else the label
        assert torch.equal(model(image, label, mask), model(image, label, mask, branch_label=label))
        assert not torch.allclose(model(image, label, mask), model(image, label, mask, branch_label=changed), atol=1e-4)
    with pytest.raises(LmaeError, match="reads the labels"):
        model.image_features(image)


def test_patch_embeddings_of_the_fuse_map_and_hint_equal_the_stack_fuse_convolution():
    """`fuse_tokens` and `one_hot_patch_tokens` skip convolving one-hot planes; they must give
    the convolution's values and gradients, with uniform, mixed, void and out-of-range patches."""
    torch.manual_seed(0)
    model = LabelMAE(ModelConfig(num_classes=5, patch_size=8, enc_depth=1, enc_dim=32, enc_heads=4, dec_depth=1,
                                 dec_dim=16, dec_heads=2, neighbour_hint=True, refine_channels=4))
    image, label = torch.rand(2, 3, 32, 48), torch.randint(0, 7, (2, 32, 48))  # 5 = void, 6 = out of range
    label[:, :16] = 2
    label[0, 16:24, :8] = 5
    expected = model.fuse_embed(model.fuse_map(image, label)).flatten(2).transpose(1, 2)
    tokens = model.fuse_tokens(image, label)
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-5)
    grad, expected_grad = (torch.autograd.grad(t.square().sum(), model.fuse_embed.weight)[0] for t in (tokens, expected))
    torch.testing.assert_close(grad, expected_grad, atol=1e-4, rtol=1e-4)
    used = torch.rand(2, 24) < 0.5  # tokens that will be read (the encoder's, the hidden slots' hints)
    with torch.no_grad():
        torch.testing.assert_close(model.fuse_tokens(image, label, used)[used], expected[used], atol=1e-5, rtol=1e-5)
    hint = one_hot_patch_tokens(model.hint_embed.weight, label, 8) + model.hint_embed.bias
    used_hint = one_hot_patch_tokens(model.hint_embed.weight, label, 8, used) + model.hint_embed.bias
    torch.testing.assert_close(used_hint[used], hint[used])
    planes = model.class_planes(label, torch.float32)
    torch.testing.assert_close(hint, model.hint_embed(planes).flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-5)
    if torch.cuda.is_available():  # the GPU's path (a convolution) gives the same
        on_gpu = one_hot_patch_tokens(model.hint_embed.weight.cuda(), label.cuda(), 8).cpu() + model.hint_embed.bias
        torch.testing.assert_close(on_gpu, hint, atol=1e-4, rtol=1e-4)


def test_bf16_attention_of_a_token_does_not_depend_on_the_padding_of_its_pass():
    """A pass pads every tile to its most visible one; a pair's label must not depend on what
    shares its batch (a resumed run writes what one run would)."""
    torch.manual_seed(0)
    attention = Attention(64, 4).to(torch.bfloat16).eval()
    tokens = torch.randn(1, 200, 64).to(torch.bfloat16)  # 200 + 10 or more: bf16 softmax sums differed
    with torch.inference_mode():
        alone = attention(tokens, torch.ones(1, 1, 1, 200, dtype=torch.bool))
        for extra in (4, 10, 31, 58):
            padded = torch.cat([tokens, torch.randn(1, extra, 64).to(torch.bfloat16)], 1)
            keys = torch.ones(1, 1, 1, 200 + extra, dtype=torch.bool)
            keys[..., 200:] = False
            assert torch.equal(attention(padded, keys)[:, :200], alone)


def test_cpu_bf16_inference_pads_its_row_counts_to_a_few_sizes_and_the_logits_stay(monkeypatch):
    """Under bf16 on a CPU each new matrix shape costs oneDNN a primitive it keeps, and resident
    memory grew over thousands of pairs: the encoder's and decoder's token widths and the rows of
    the head, the refiner and the mixed-patch product are padded up to `bucketed` sizes. The
    needed patches' logits are the same as without the padding; float32 is not padded."""
    from lmae_repair import model as model_module

    assert [model_module.bucketed(n) for n in (1, 100, 1000)] == [1, 100, 1000]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sizes = [model_module.bucketed(n) for n in range(1, 4097)]
    assert all(n <= size <= n + max(7, n // 8) for n, size in zip(range(1, 4097), sizes))
    assert len(set(sizes)) <= 100
    model = small_model(neighbour_hint=True, refine_channels=4, image_branch=4)
    for layer in model.refine.layers:
        if isinstance(layer, torch.nn.Conv2d):
            torch.nn.init.normal_(layer.weight, std=0.2)
    torch.manual_seed(1)
    image, label, mask = inputs(3, 48, 64)
    mask = torch.rand(mask.shape) < 0.5  # each tile its own number of visible and needed patches
    needed = mask & (torch.rand(mask.shape) < 0.7)
    head_rows = []
    model.head.register_forward_hook(lambda _module, args, _output: head_rows.append(len(args[0])))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        padded = model.forward_patches(image, label, mask, needed, context_radius=2)
        monkeypatch.setattr(model_module, "bucketed", lambda count: count)
        unpadded = model.forward_patches(image, label, mask, needed, context_radius=2)
    assert head_rows[0] in sizes and head_rows[0] > head_rows[1]  # padded, then not
    assert torch.equal(padded, unpadded)
