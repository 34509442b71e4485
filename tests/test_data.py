import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import VOC_PALETTE, make_cityscapes, make_paired, make_scene, make_voc, write_pair
from lmae_repair.cli import app
from lmae_repair.data import LabelFile, discover, read_image, read_label, read_pair, write_label
from lmae_repair.errors import LmaeError
from lmae_repair.labelspace import LabelSpace, build_label_space

runner = CliRunner()


def keys(index):
    return sorted(p.key for p in index.pairs)


def test_paired_folders_are_matched_by_stem(tmp_path):
    root = make_paired(tmp_path / "ds", count=3)
    index = discover(root)
    assert index.layout == "paired"
    assert keys(index) == ["labels/scene_000.png", "labels/scene_001.png", "labels/scene_002.png"]
    for pair in index.pairs:
        assert pair.image.stem == pair.label.stem and pair.image.parent.name == "images"


@pytest.mark.parametrize("label_dir", ["masks", "annotations"])
def test_paired_folders_accept_masks_and_annotations(tmp_path, label_dir):
    root = make_paired(tmp_path / "ds", count=2, labels=label_dir)
    assert len(discover(root).pairs) == 2


def test_paired_folders_are_found_recursively_and_by_split(tmp_path):
    make_paired(tmp_path / "ds" / "train", count=3, seed=1)
    make_paired(tmp_path / "ds" / "val", count=2, seed=2)
    assert len(discover(tmp_path / "ds").pairs) == 5
    val = discover(tmp_path / "ds", split="val")
    assert keys(val) == ["val/labels/scene_000.png", "val/labels/scene_001.png"]
    with pytest.raises(LmaeError, match="test"):
        discover(tmp_path / "ds", split="test")


def test_paired_reports_unmatched_files_and_label_suffixes(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "ds"
    image, label = make_scene(rng)
    write_pair(root / "images" / "a.jpg", root / "labels" / "a_mask.png", image, label)
    write_pair(root / "images" / "lonely.png", root / "labels" / "orphan.png", image, label)
    index = discover(root)
    assert keys(index) == ["labels/a_mask.png"]
    assert any("orphan.png" in line for line in index.unmatched)
    assert any("lonely.png" in line for line in index.unlabelled)  # an image without label: not a failure


def test_nested_subfolders_inside_images_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "ds"
    for city in ("x", "y"):
        image, label = make_scene(rng)
        write_pair(root / "images" / city / "f.png", root / "labels" / city / "f.png", image, label)
    assert keys(discover(root)) == ["labels/x/f.png", "labels/y/f.png"]


def test_voc_layout_with_splits(tmp_path):
    root = make_voc(tmp_path / "voc", count=6)
    index = discover(root, split="train")
    assert index.layout == "voc" and len(index.pairs) == 4
    assert all(p.key.startswith("SegmentationClass/") for p in index.pairs)
    assert len(discover(root, split="val").pairs) == 2
    assert len(discover(root).pairs) == 6
    with pytest.raises(LmaeError, match="available splits: train, val"):
        discover(root, split="trainaug")


def test_voc_nested_in_vocdevkit(tmp_path):
    make_voc(tmp_path / "VOCdevkit" / "VOC2012", count=4)
    index = discover(tmp_path, split="val")
    assert index.layout == "voc" and len(index.pairs) == 2
    assert index.pairs[0].key.startswith("VOCdevkit/VOC2012/SegmentationClass/")
    (tmp_path / "VOCdevkit" / "VOC2012" / "classes.txt").write_text("background\nrust\nhole\n")
    from lmae_repair.labelspace import find_classes_file

    assert find_classes_file(tmp_path) == tmp_path / "VOCdevkit" / "VOC2012" / "classes.txt"
    make_voc(tmp_path / "VOCdevkit" / "VOC2007", count=2)  # two years: neither is taken silently
    with pytest.raises(LmaeError, match=r"2 Pascal VOC datasets \(VOCdevkit/VOC2007, VOCdevkit/VOC2012\)"):
        discover(tmp_path)
    assert len(discover(tmp_path / "VOCdevkit" / "VOC2007").pairs) == 2
    shutil.rmtree(tmp_path / "VOCdevkit" / "VOC2007")
    (tmp_path / "VOC2012").symlink_to(tmp_path / "VOCdevkit" / "VOC2012")  # one dataset, reached twice
    assert len(discover(tmp_path).pairs) == 4


def test_a_label_folder_left_out_beside_the_one_taken_is_noted(tmp_path):
    root = make_paired(tmp_path / "ds", count=2)
    assert discover(root).notes == []
    (root / "masks").mkdir()  # e.g. valid-region masks beside the labels
    index = discover(root)
    assert len(index.pairs) == 2 and index.pairs[0].label.parent.name == "labels"
    assert index.notes == [f"{root / 'labels'}: taken as the labels; masks beside it left out (name the folders with "
                           "--images and --labels to use another)"]


def test_hidden_folders_are_not_data_and_subfolders_must_match(tmp_path):
    root = make_paired(tmp_path / "ds", count=3)
    checkpoints = root / "labels" / ".ipynb_checkpoints"  # what a notebook leaves beside the labels
    checkpoints.mkdir()
    (checkpoints / "scene_000-checkpoint.png").write_bytes((root / "labels" / "scene_000.png").read_bytes())
    index = discover(root)
    assert len(index.pairs) == 3 and not index.unmatched
    (root / "labels" / "sub").mkdir()
    (root / "labels" / "scene_001.png").rename(root / "labels" / "sub" / "scene_001.png")
    index = discover(root)
    assert len(index.pairs) == 2
    assert index.unmatched == [f"{root / 'labels' / 'sub' / 'scene_001.png'}: no image with the same name in sub/ (an image of "
                               f"that name is in the top folder of {root / 'images'}: the subfolders below the images "
                               "and labels folders must match)"]
    (root / "images" / "scene_002.png").rename(root / "images" / "scene_002_seg.png")  # no partner anywhere: no hint
    assert not any("subfolders" in line for line in discover(root).unmatched + discover(root).unlabelled if "scene_002" in line)


def test_voc_split_listing_a_missing_pair_is_reported(tmp_path):
    root = make_voc(tmp_path / "voc", count=3, splits={"train": ["2007_000000", "2007_999999"]})
    index = discover(root, split="train")
    assert len(index.pairs) == 1 and any("2007_999999" in u for u in index.unmatched)


def test_an_empty_voc_split_list_is_named_not_reported_as_a_dataset_without_pairs(tmp_path):
    root = make_voc(tmp_path / "voc", count=4)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n  \r\n")  # was "found no image/label pairs"
    with pytest.raises(LmaeError, match=r"val.txt: names no pair \(the split list is empty\); give another --split, or none to take all 4 pairs"):
        discover(root, split="val")


def test_voc_image_listed_in_a_split_without_its_label_is_a_failed_pair(tmp_path):
    root = make_voc(tmp_path / "voc", count=4)
    (root / "SegmentationClass" / "2007_000003.png").unlink()  # listed in val.txt
    (root / "JPEGImages" / "2008_000000.jpg").write_bytes((root / "JPEGImages" / "2007_000000.jpg").read_bytes())  # listed nowhere
    for split in (None, "val"):
        index = discover(root, split=split)
        label = root / "SegmentationClass" / "2007_000003.png"  # named as the user's path gives it
        assert index.unmatched == [f"{label}: ImageSets/Segmentation/val.txt lists 2007_000003, but this label is missing (its image is there)"], split
        assert "2007_000003" not in {p.label.stem for p in index.pairs}
    assert index.unlabelled == []  # an unlisted JPEGImages file without a label is normal in VOC


def test_a_split_list_typed_with_composed_accents_finds_files_named_with_decomposed_ones(tmp_path):
    """macOS writes file names decomposed (e + combining accent); an editor types the list composed:
    the two look the same, yet the pair was reported as "neither this label nor its image exists"."""
    import unicodedata

    root = make_voc(tmp_path / "voc", count=3, splits={"val": ["2007_000000", "béton_fissuré"]})
    decomposed = unicodedata.normalize("NFD", "béton_fissuré")
    for folder, suffix in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png")):
        (root / folder / f"2007_000001{suffix}").rename(root / folder / f"{decomposed}{suffix}")
    index = discover(root, split="val")
    assert index.unmatched == []
    assert sorted(p.label.name for p in index.pairs) == sorted(["2007_000000.png", f"{decomposed}.png"])


def test_an_image_and_a_label_whose_names_differ_only_in_how_accents_are_stored_pair(tmp_path):
    """Labels exported on a Mac (decomposed accents) beside images named elsewhere (composed):
    the label was "fissuré.png: no image with the same name" beside fissuré.jpg."""
    import unicodedata

    root = make_paired(tmp_path / "ds", count=2)
    (root / "images" / "scene_000.png").rename(root / "images" / f"{unicodedata.normalize('NFC', 'fissuré')}.png")
    (root / "labels" / "scene_000.png").rename(root / "labels" / f"{unicodedata.normalize('NFD', 'fissuré')}.png")
    index = discover(root)
    assert index.unmatched == [] and index.unlabelled == [] and len(index.pairs) == 2


def test_a_split_list_name_is_the_label_it_names_not_one_of_that_name_in_a_subfolder(tmp_path):
    """VOC with a subfolder from another source holding a file of the same name: --split val took
    SegmentationClass/siteB/2007_000002.png for the listed 2007_000002 and left out the one meant."""
    root = make_voc(tmp_path / "voc", count=4)  # val: 2007_000002, 2007_000003
    for folder, suffix in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png")):
        (root / folder / "siteB").mkdir()
        shutil.copy(root / folder / f"2007_000002{suffix}", root / folder / "siteB" / f"2007_000002{suffix}")
    assert keys(discover(root, split="val")) == ["SegmentationClass/2007_000002.png", "SegmentationClass/2007_000003.png"]
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("siteB/2007_000002\n")
    assert keys(discover(root, split="val")) == ["SegmentationClass/siteB/2007_000002.png"]


def test_a_dataset_where_no_file_pairs_says_why(tmp_path):
    """Every label saved as JPEG: the run ended in "found no image/label pairs", the reason dropped."""
    root = make_paired(tmp_path / "ds", count=2)
    for label in (root / "labels").glob("*.png"):
        Image.open(label).convert("L").save(label.with_suffix(".jpg"))
        label.unlink()
    with pytest.raises(LmaeError, match=r"found no image/label pairs \(paired layout\): .*2 files left out "
                                        r"\(first: .*scene_000.jpg: a JPG label; lossy compression"):
        discover(root)


def test_a_split_list_saved_as_windows_ansi_finds_accented_names(tmp_path):
    """Notepad's "ANSI" (cp1252) list naming béton_01 (a UTF-8 file name): it was read as
    "b\ufffdton_01", a pair that "neither this label nor its image exists"."""
    root = make_voc(tmp_path / "voc", count=3, splits={"val": ["2007_000000"]})
    for folder, suffix in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png")):
        (root / folder / f"2007_000001{suffix}").rename(root / folder / f"béton_01{suffix}")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_bytes("2007_000000\r\nbéton_01\r\n".encode("cp1252"))
    index = discover(root, split="val")
    assert index.unmatched == [] and sorted(p.label.name for p in index.pairs) == ["2007_000000.png", "béton_01.png"]


def test_cityscapes_layout(tmp_path):
    root = make_cityscapes(tmp_path / "cs")
    index = discover(root, split="train")
    assert index.layout == "cityscapes" and len(index.pairs) == 5
    assert index.pairs[0].key.startswith("gtFine/train/")
    assert index.pairs[0].label.name.endswith("_gtFine_labelTrainIds.png")
    assert len(discover(root).pairs) == 7
    assert index.known_class_names[0] == "road"
    with pytest.raises(LmaeError, match="available: train, val"):
        discover(root, split="test")
    assert not index.unmatched
    (root / "leftImg8bit" / "val" / "lindau" / "lindau_000001_000019_leftImg8bit.png").unlink()  # a label left without its image
    assert discover(root, split="train").unmatched == []  # another split's
    assert discover(root).unmatched == [f"{root / 'gtFine' / 'val' / 'lindau' / 'lindau_000001_000019_gtFine_labelTrainIds.png'}: "
                                        f"no image lindau_000001_000019_leftImg8bit.png (or .jpg) in {root / 'leftImg8bit' / 'val' / 'lindau'}"]


def test_cityscapes_with_label_ids_only_says_to_make_train_ids(tmp_path):
    root = make_cityscapes(tmp_path / "cs")
    for label in list((root / "gtFine").rglob("*_labelTrainIds.png")):
        label.rename(label.with_name(label.name.replace("_labelTrainIds", "_labelIds")))
    with pytest.raises(LmaeError, match="csCreateTrainIdLabelImgs") as raised:
        discover(root)
    assert f"`CITYSCAPES_DATASET={root} csCreateTrainIdLabelImgs`" in str(raised.value)  # run bare, it finds nothing


def test_cityscapes_with_train_ids_for_part_of_it_says_how_to_make_the_rest(tmp_path):
    root = make_cityscapes(tmp_path / "cs")
    for label in list((root / "gtFine" / "val").rglob("*_labelTrainIds.png")):
        label.rename(label.with_name(label.name.replace("_labelTrainIds", "_labelIds")))
    index = discover(root)
    assert len(index.pairs) == 5 and len(index.unlabelled) == 2
    assert index.unlabelled[0].endswith("lindau_000000_000019_leftImg8bit.png: no lindau_000000_000019_gtFine_labelTrainIds.png, "
                                        f"only its _gtFine_labelIds.png (make the train ids with `CITYSCAPES_DATASET={root} "
                                        "csCreateTrainIdLabelImgs` (pip install cityscapesscripts; it draws them from the *_gtFine_polygons.json))")


def test_images_and_labels_inside_a_cityscapes_tree(tmp_path):
    """--images/--labels naming one city (or split) of a Cityscapes tree pair its train ids,
    whatever else gtFine holds; they had matched nothing ("found no image/label pairs")."""
    root = make_cityscapes(tmp_path / "cs")
    city = root / "gtFine" / "train" / "aachen"
    for label in list(city.glob("*_labelTrainIds.png")):  # the rest of gtFine beside the train ids
        for kind in ("_labelIds", "_color", "_instanceIds"):
            shutil.copy(label, label.with_name(label.name.replace("_labelTrainIds", kind)))
    index = discover(images=root / "leftImg8bit" / "train" / "aachen", labels=city)
    assert len(index.pairs) == 3 and not index.unmatched and not index.unlabelled
    assert all(pair.label.name.endswith("_gtFine_labelTrainIds.png") for pair in index.pairs)
    assert index.known_class_names[0] == "road"  # the 19 train ids, as for the whole tree
    assert len(discover(images=root / "leftImg8bit" / "train", labels=root / "gtFine" / "train").pairs) == 5
    out = tmp_path / "out"  # what complete writes for them: images/ + labels/, a dataset of its own
    shutil.copytree(root / "leftImg8bit" / "val" / "lindau", out / "images")
    shutil.copytree(root / "gtFine" / "val" / "lindau", out / "labels")
    assert len(discover(out).pairs) == 2
    for label in list(city.glob("*_labelTrainIds.png")):
        label.unlink()
    with pytest.raises(LmaeError, match="csCreateTrainIdLabelImgs"):
        discover(images=root / "leftImg8bit" / "train" / "aachen", labels=city)


def test_cityscapes_label_ids_that_cannot_say_what_is_annotated_are_named_with_why(tmp_path):
    root = make_cityscapes(tmp_path / "cs")
    pair = discover(root, split="val").pairs[0]
    ids = pair.label.with_name(pair.label.name.replace("_labelTrainIds", "_labelIds"))
    values = np.array(Image.open(pair.label))
    Image.fromarray(np.stack([values] * 3, -1)).save(ids)  # saved as colour: the size is the same, the channels not
    with pytest.raises(LmaeError, match=re.escape(f"{ids}: 3 channels (mode RGB); Cityscapes label ids are one value per pixel")):
        read_pair(pair, with_kept=True)
    Image.fromarray(values[:, :64]).save(ids)
    with pytest.raises(LmaeError, match=re.escape(f"{ids}: 64x64 but {pair.label.name} is 128x64")):
        read_pair(pair, with_kept=True)


def test_data_inside_a_cityscapes_tree_names_the_tree(tmp_path):
    """DATA given as a split or city folder of a Cityscapes tree (or cd'ed into one): the error
    names the tree to give instead of a bare "no dataset layout found"."""
    root = make_cityscapes(tmp_path / "cs")
    for inside in (root / "gtFine", root / "leftImg8bit" / "val", root / "gtFine" / "val" / "lindau"):
        with pytest.raises(LmaeError, match=re.escape(f"inside the Cityscapes dataset {root.resolve()}; give that folder as DATA")):
            discover(inside)


def test_explicit_images_and_labels(tmp_path):
    make_paired(tmp_path / "a", count=2, images="pics", labels="gts")
    index = discover(images=tmp_path / "a" / "pics", labels=tmp_path / "a" / "gts")
    assert len(index.pairs) == 2
    with pytest.raises(LmaeError, match="together"):
        discover(images=tmp_path / "a" / "pics")
    with pytest.raises(LmaeError, match="not both"):  # DATA would be ignored: refused, not guessed at
        discover(tmp_path / "a", images=tmp_path / "a" / "pics", labels=tmp_path / "a" / "gts")
    with pytest.raises(LmaeError, match="split"):
        discover(split="val", images=tmp_path / "a" / "pics", labels=tmp_path / "a" / "gts")


def test_missing_or_unrecognised_folder(tmp_path):
    with pytest.raises(LmaeError, match="no such dataset folder"):
        discover(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LmaeError, match="no dataset layout found"):
        discover(tmp_path / "empty")
    (tmp_path / "list.txt").write_text("a file, not a dataset")
    with pytest.raises(LmaeError, match="list.txt: not a folder"):
        discover(tmp_path / "list.txt")


def test_palette_labels_round_trip_with_their_palette(tmp_path):
    root = make_voc(tmp_path / "voc", count=2)
    label = read_label(discover(root).pairs[0].label)
    assert label.mode == "P" and label.palette[:12] == VOC_PALETTE[:12]
    out = tmp_path / "out" / "x.png"
    write_label(out, label)
    again = read_label(out)
    assert again.mode == "P" and again.palette == label.palette
    assert np.array_equal(again.values, label.values)
    assert not list(out.parent.glob(".*.tmp"))  # no temporary file left behind


def test_a_class_added_beyond_a_short_palette_is_written_not_dropped(tmp_path):
    """A label of background and crack saved with a palette of those two colours (a 1-bit PNG):
    spalling pixels the repair added were written as background (index 2 in 1 bit is 0)."""
    values = np.zeros((16, 16), np.uint8)
    values[2:4] = 1
    img = Image.fromarray(values, "L")
    img.putpalette([0, 0, 0, 128, 0, 0])
    img.save(tmp_path / "two-colours.png")
    label = read_label(tmp_path / "two-colours.png")
    assert label.mode == "P" and len(label.palette) == 6
    label.values[8:10] = 2  # what a repair adds
    write_label(tmp_path / "repaired.png", label)
    written = Image.open(tmp_path / "repaired.png")
    assert written.mode == "P" and written.getpalette()[:6] == [0, 0, 0, 128, 0, 0]  # its own colours kept
    assert np.array_equal(np.array(written), label.values)


def test_label_modes(tmp_path):
    values = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    Image.fromarray(values.astype(np.uint16)).save(tmp_path / "wide.png")
    assert np.array_equal(read_label(tmp_path / "wide.png").values, values)
    Image.fromarray(np.stack([values, values, values * 0], -1)).save(tmp_path / "rgb.png")
    with pytest.raises(LmaeError, match=r"rgb.png: colour \(RGB\) label"):
        read_label(tmp_path / "rgb.png")
    Image.fromarray(np.stack([values] * 3, -1)).save(tmp_path / "grey-rgb.png")  # indices saved as grey colour
    grey = read_label(tmp_path / "grey-rgb.png")
    assert np.array_equal(grey.values, values)
    write_label(tmp_path / "grey-out.png", grey)  # written back the way it came
    assert Image.open(tmp_path / "grey-out.png").mode == "RGB"
    assert np.array_equal(read_label(tmp_path / "grey-out.png").values, values)
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(LmaeError, match="text.png: unreadable label"):
        read_label(tmp_path / "text.png")
    write_label(tmp_path / "gray.png", LabelFile(values, "L", None))
    assert Image.open(tmp_path / "gray.png").mode == "L"
    wide = read_label(tmp_path / "wide.png")
    write_label(tmp_path / "wide-out.png", wide)  # 16-bit stays 16-bit
    assert Image.open(tmp_path / "wide-out.png").mode == "I;16"
    assert np.array_equal(read_label(tmp_path / "wide-out.png").values, values)
    Image.fromarray(values.astype(np.int32)).save(tmp_path / "deep.tif")  # 32-bit grey (mode I)
    write_label(tmp_path / "deep-out.tif", read_label(tmp_path / "deep.tif"))
    assert Image.open(tmp_path / "deep-out.tif").mode == "I"
    assert np.array_equal(read_label(tmp_path / "deep-out.tif").values, values)
    from PIL import TiffImagePlugin, TiffTags

    geo = TiffImagePlugin.ImageFileDirectory_v2()
    geo[33550] = (0.5, 0.5, 0.0)  # GeoTIFF's ModelPixelScale: a GIS places the label by it
    geo.tagtype[33550] = TiffTags.DOUBLE
    Image.fromarray(values).save(tmp_path / "geo.tif", compression="tiff_lzw", tiffinfo=geo)
    write_label(tmp_path / "geo-out.tif", read_label(tmp_path / "geo.tif"))
    written = Image.open(tmp_path / "geo-out.tif")
    assert written.info["compression"] == "tiff_lzw" and written.tag_v2[33550] == (0.5, 0.5, 0.0)
    smooth = np.tile(np.arange(64, dtype=np.uint8) % 3, (64, 1))
    Image.fromarray(smooth).save(tmp_path / "jpeg.tif", compression="jpeg")  # lossy: written back lossless
    lossy = read_label(tmp_path / "jpeg.tif")
    write_label(tmp_path / "jpeg-out.tif", lossy)
    assert Image.open(tmp_path / "jpeg-out.tif").info["compression"] == "tiff_lzw"
    assert np.array_equal(read_label(tmp_path / "jpeg-out.tif").values, lossy.values)
    mask = np.array([[0, 1], [1, 0]], dtype=bool)
    Image.fromarray(mask).save(tmp_path / "bits.png")  # a two-class mask at one bit per pixel
    bits = read_label(tmp_path / "bits.png")
    assert np.array_equal(bits.values, mask.astype(np.uint8))
    bits.values[0, 0] = 1  # as a repair would: a missed pixel completed
    write_label(tmp_path / "bits-out.png", bits)  # stays 1-bit, as the curator's other masks
    assert Image.open(tmp_path / "bits-out.png").mode == "1"
    assert read_label(tmp_path / "bits-out.png").values.tolist() == [[1, 1], [1, 0]]


def test_a_grey_label_with_transparent_pixels_is_not_called_a_colour_label(tmp_path):
    values = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    alpha = np.array([[128, 255], [255, 255]], dtype=np.uint8)  # background half transparent, as an editor left it
    Image.fromarray(np.stack([values, values, values, alpha], -1), "RGBA").save(tmp_path / "see-through.png")
    with pytest.raises(LmaeError, match=r"see-through.png: grey label with transparent pixels \(RGBA, alpha below 255\); .* "
                                        "save it without the alpha channel") as refused:
        read_label(tmp_path / "see-through.png")
    assert "colour" not in str(refused.value)


def test_a_grey_label_with_an_opaque_alpha_channel_is_read_and_written_back_so(tmp_path):
    values = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    alpha = np.array([[128, 255], [255, 255]], dtype=np.uint8)
    Image.fromarray(np.stack([values, np.full_like(values, 255)], -1), "LA").save(tmp_path / "grey-alpha.png")  # GIMP's grey + alpha
    opaque = read_label(tmp_path / "grey-alpha.png")  # was refused: "label has 2 channels (mode LA)"
    assert np.array_equal(opaque.values, values)
    write_label(tmp_path / "grey-alpha-out.png", opaque)  # written back the way it came
    assert Image.open(tmp_path / "grey-alpha-out.png").mode == "LA"
    assert np.array_equal(read_label(tmp_path / "grey-alpha-out.png").values, values)
    Image.fromarray(np.stack([values, alpha], -1), "LA").save(tmp_path / "grey-alpha-see-through.png")
    with pytest.raises(LmaeError, match=r"grey label with transparent pixels \(LA, alpha below 255\)"):
        read_label(tmp_path / "grey-alpha-see-through.png")


def test_size_mismatch_between_image_and_label(tmp_path):
    rng = np.random.default_rng(0)
    image, _ = make_scene(rng, 32, 32)
    _, label = make_scene(rng, 32, 48)
    write_pair(tmp_path / "images" / "a.png", tmp_path / "labels" / "a.png", image, label)
    with pytest.raises(LmaeError, match="a.png: label is 48x32 but its image is 32x32"):
        read_pair(discover(tmp_path).pairs[0])


def test_label_space_from_classes_txt(tmp_path):
    (tmp_path / "classes.txt").write_text("sky\nroad\ncar\nvoid\n")
    space = build_label_space(tmp_path)
    assert (space.num_classes, space.background_id, space.void_id) == (3, None, 3)
    (tmp_path / "classes.txt").write_text("background\ncrack\nspalling\n")
    space = build_label_space(tmp_path)
    assert (space.num_classes, space.background_id, space.void_id) == (3, 0, 255)
    assert build_label_space(tmp_path, background_id=None, void_id=200).void_id == 200
    (tmp_path / "classes.txt").write_text("# CamVid\nvoid\nsky\nroad\n")  # void first: value 0 is a class
    from lmae_repair.labelspace import void_named

    space = build_label_space(tmp_path)  # read as it says (audit and complete go on); train refuses it
    assert space.names == ["void", "sky", "road"] and void_named(space.names).startswith("class 0 is named 'void'")
    assert void_named(LabelSpace(3, ["sky", "road", "unknown"]).names) is None
    (tmp_path / "classes.txt").write_text("0 void\n1 sky\n2 road\n")  # void below the classes: said so, with the way out
    with pytest.raises(LmaeError, match=r"void value 0 is one of the class values 0..2 .*remap the labels"):
        build_label_space(tmp_path)


@pytest.mark.parametrize("text,expected", [
    ("0 background\n1 cat\n2 dog\n", (["background", "cat", "dog"], 0, 255)),
    ("0: background\n1: cat\n2: dog\n255: ignore\n", (["background", "cat", "dog"], 0, 255)),
    ("0=sky\n2=car\n3=void\n", (["sky", "class_1", "car"], None, 3)),
    ("__ignore__\n_background_\ncat\ndog\n", (["_background_", "cat", "dog"], 0, 255)),  # labelme's labels.txt
])
def test_class_lists_that_give_values_or_come_from_labelme_are_read_as_meant(tmp_path, text, expected):
    (tmp_path / "labels.txt").write_text(text)
    space = build_label_space(tmp_path)
    assert (space.names, space.background_id, space.void_id) == expected


def test_a_class_list_giving_a_class_the_value_255_names_the_file_and_the_way_out(tmp_path):
    """`0 background` / `255 lesion` is how a curator of 0/255 masks lists them: it made 256
    classes, refused as 'label space: number of classes must be 1..255, got 256', naming no file."""
    (tmp_path / "classes.txt").write_text("0 background\n255 lesion\n")
    with pytest.raises(LmaeError, match=r"classes.txt: class value 255 \(lesion\).*save the objects as 1") as error:
        build_label_space(tmp_path)
    assert "`1 lesion`" in str(error.value)
    (tmp_path / "classes.txt").write_text("0 background\n1 lesion\n255 void\n")  # void may be 255
    assert build_label_space(tmp_path).num_classes == 2


def test_label_space_defaults_without_classes_txt(tmp_path):
    space = build_label_space(tmp_path / "nothing", scanned_max_value=6)
    assert (space.num_classes, space.background_id, space.void_id) == (7, 0, 255)
    with pytest.raises(LmaeError, match="void value 3 is one of the class values 0..4"):
        LabelSpace(5, void_id=3)


def test_isic_style_segmentation_masks_pair_with_their_images(tmp_path):
    """ISIC's skin-lesion masks are named ISIC_0000000_segmentation.png beside ISIC_0000000.jpg:
    every one was reported as 'no image with the same name' and nothing paired."""
    image, label = make_scene(np.random.default_rng(0))
    write_pair(tmp_path / "ds" / "images" / "ISIC_0000000.jpg", tmp_path / "ds" / "masks" / "ISIC_0000000_segmentation.png", image, label)
    index = discover(tmp_path / "ds")
    assert keys(index) == ["masks/ISIC_0000000_segmentation.png"] and not index.unmatched


def test_images_and_labels_in_one_folder_pair_by_name_not_with_themselves(tmp_path):
    """x.jpg beside x_mask.png (or x.png) in one folder: the PNG is the label of the JPEG, never
    an image of its own paired with itself."""
    folder = tmp_path / "data"
    make_paired(tmp_path / "src", count=2)
    folder.mkdir()
    for i, label in enumerate(sorted((tmp_path / "src" / "labels").glob("*.png"))):
        image = tmp_path / "src" / "images" / f"{label.stem}.png"
        Image.open(image).convert("RGB").save(folder / f"{label.stem}.jpg", quality=95)
        (folder / (f"{label.stem}_mask.png" if i == 0 else f"{label.stem}.png")).write_bytes(label.read_bytes())
    index = discover(images=folder, labels=folder)
    assert sorted((p.image.suffix, p.label.name.endswith(("_mask.png", ".png"))) for p in index.pairs) == [(".jpg", True)] * 2
    assert all(p.image != p.label for p in index.pairs) and not index.unlabelled and not index.unmatched


def test_a_16_bit_grey_image_is_scaled_to_8_bits_not_clipped_to_white(tmp_path):
    from lmae_repair.data import read_image

    grey = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "wide.png")
    assert Image.open(tmp_path / "wide.png").mode.startswith("I")
    pixels = read_image(tmp_path / "wide.png")
    assert pixels.shape == (48, 64, 3) and pixels.dtype == np.uint8
    assert pixels.min() == 0 and pixels.max() == 255 and abs(pixels.mean() - 127.5) < 1
    Image.fromarray((grey / 65535).astype(np.float32)).save(tmp_path / "unit.tif")  # reflectance scaled 0..1
    with pytest.raises(LmaeError, match="missing.tif: unreadable image"):  # gone since it was found: one line
        read_image(tmp_path / "missing.tif")
    unit = read_image(tmp_path / "unit.tif")
    assert unit.min() == 0 and unit.max() == 255 and abs(unit.mean() - 127.5) < 1  # not read black (0 and 1)


def test_images_of_more_than_8_bits_use_the_range_their_data_uses(tmp_path, capfd):
    """12-bit scans in 16-bit files, 16-bit colour TIFFs, signed rasters: read almost black (or
    clipped) before, so the model saw nothing of them."""
    import cv2

    from lmae_repair.data import read_image

    ramp = np.linspace(0, 4095, 64 * 48).reshape(48, 64)
    Image.fromarray(ramp.astype(np.uint16)).save(tmp_path / "ct.png")  # 12 bits of 16
    grey = read_image(tmp_path / "ct.png")
    assert grey.min() == 0 and grey.max() == 255 and abs(grey.mean() - 127.5) < 2

    colour = np.zeros((48, 64, 4), np.uint16)  # R, G, B, near-infrared; red the brightest band
    colour[..., 0], colour[..., 1], colour[..., 2], colour[..., 3] = 3000, 1500, 100, 4000
    colour[0, 0, :3] = 0
    cv2.imwrite(str(tmp_path / "rgbn.tif"), colour[..., [2, 1, 0, 3]])  # OpenCV writes B, G, R, A
    assert Image.open(tmp_path / "rgbn.tif").mode in ("RGB", "RGBA")  # PIL would keep the high byte
    rgb = read_image(tmp_path / "rgbn.tif")
    red, green, blue = rgb[5, 5].tolist()
    assert rgb.shape == (48, 64, 3) and red == 255 and 100 < green < 140 and blue < 20

    assert "TIFF" not in capfd.readouterr().err  # libtiff's warnings, naming no file, stay quiet
    Image.fromarray((ramp - 2000).astype(np.int32)).save(tmp_path / "dem.tif")  # signed values
    signed = read_image(tmp_path / "dem.tif")
    assert signed.min() == 0 and signed.max() == 255


def test_a_16_bit_colour_png_of_12_bit_data_is_not_read_almost_black(tmp_path):
    """PIL reads a 16-bit RGB PNG as 8 bits by keeping the high byte: a 12-bit camera's frames came
    out 0-15, black to the model."""
    import cv2

    from lmae_repair.data import read_image

    ramp = np.linspace(0, 4095, 64 * 48).reshape(48, 64).astype(np.uint16)  # 12 bits of 16
    cv2.imwrite(str(tmp_path / "camera.png"), np.stack([ramp, ramp, ramp], -1))
    assert Image.open(tmp_path / "camera.png").mode == "RGB"
    rgb = read_image(tmp_path / "camera.png")
    assert rgb.shape == (48, 64, 3) and rgb.min() == 0 and rgb.max() == 255 and abs(rgb.mean() - 127.5) < 2
    Image.fromarray(np.zeros((8, 8, 3), np.uint8) + 200).save(tmp_path / "plain.png")  # 8-bit colour: as it is
    assert read_image(tmp_path / "plain.png").max() == 200


def test_a_size_mismatch_from_an_exif_quarter_turn_says_so(tmp_path):
    """A photo stored 40x64 with EXIF orientation 6 shows as 64x40 in viewers, like its label;
    the error must say why they differ."""
    root = make_paired(tmp_path / "ds", count=1, size=64)
    label = next((root / "labels").iterdir())
    Image.fromarray(np.array(Image.open(label))[:40]).save(label)  # label 64 wide, 40 high
    image = next((root / "images").iterdir())
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 64)).save(image.with_suffix(".jpg"), exif=exif)
    image.unlink()
    with pytest.raises(LmaeError, match="label is 64x40 but its image is 40x64 .*EXIF orientation"):
        read_pair(discover(root).pairs[0])


def test_two_labels_naming_one_image_are_reported_not_both_repaired(tmp_path):
    """labels/a.png and labels/a_mask.png both name images/a.jpg: either could be the one meant,
    so neither is used and the clash is reported once; other pairs are unaffected."""
    rng = np.random.default_rng(0)
    root = tmp_path / "ds"
    image, label = make_scene(rng)
    write_pair(root / "images" / "a.jpg", root / "labels" / "a.png", image, label)
    write_pair(root / "images" / "a.jpg", root / "labels" / "a_mask.png", image, label)
    write_pair(root / "images" / "b.jpg", root / "labels" / "b.png", image, label)
    index = discover(root)
    assert keys(index) == ["labels/b.png"]
    clash = [line for line in index.unmatched if "a.jpg" in line]
    assert len(clash) == 1 and "labels/a.png" in clash[0] and "labels/a_mask.png" in clash[0]
    assert not any("a.jpg" in line for line in index.unlabelled)


def test_a_write_that_fails_part_way_names_the_file_and_leaves_nothing_behind(tmp_path):
    import errno

    from lmae_repair.data import atomic_write

    def disk_full(f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "report.json"
    with pytest.raises(LmaeError, match=r"report\.json: cannot write it \(No space left on device\)"):
        atomic_write(target, disk_full)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary


def test_a_label_is_encoded_in_memory_and_written_by_python(tmp_path, monkeypatch):
    """PIL writes pixels through the file descriptor without checking how many bytes went: on a
    nearly full disk a label was cut short with no error and renamed into place. Encoded in
    memory, its bytes are written by Python, which raises on a short write (atomic_write)."""
    import io

    real_save = Image.Image.save
    given = []

    def recorded_save(self, fp, *args, **kwargs):
        given.append(type(fp))
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", recorded_save)
    values = np.arange(64 * 64, dtype=np.uint8).reshape(64, 64) % 3
    for name in ("x.png", "x.tif", "x.bmp"):
        write_label(tmp_path / name, LabelFile(values, "L", None))
        assert np.array_equal(read_label(tmp_path / name).values, values)
    assert given and all(kind is io.BytesIO for kind in given)


def test_a_folder_that_cannot_be_read_is_named_not_skipped_silently(tmp_path, monkeypatch):
    """A folder without read permission (made here as os.walk meets it: the tests may run as root,
    who reads any folder)."""
    import lmae_repair.data as data

    root = make_paired(tmp_path / "ds", count=2)
    hidden = root / "labels" / "cityB"
    real_walk = os.walk

    def walk_meeting_a_locked_folder(top, **options):
        if Path(top) == root / "labels":
            options["onerror"](PermissionError(13, "Permission denied", str(hidden)))
        return real_walk(top, **options)

    monkeypatch.setattr(data.os, "walk", walk_meeting_a_locked_folder)
    index = discover(root)
    assert len(index.pairs) == 2
    assert [line for line in index.unmatched if "cannot read this folder" in line] == [
        f"{hidden}: cannot read this folder (Permission denied); the files in it are left out"]


def test_a_folder_named_like_a_split_list_is_not_read_as_one(tmp_path):
    """ImageSets/Segmentation/backup.txt/ (a folder) stopped a run without --split: "Is a directory"."""
    root = make_voc(tmp_path / "voc", count=4)
    (root / "ImageSets" / "Segmentation" / "backup.txt").mkdir()
    assert len(discover(root).pairs) == 4
    with pytest.raises(LmaeError, match=r"no such split file \(available splits: train, val\)"):
        discover(root, split="backup")


def save_blank_image(path, size=(32, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(path)


def save_blank_label(path, size=(32, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ones((size[1], size[0]), np.uint8)).save(path)


def test_images_without_labels_says_so_and_how_pairs_are_made(tmp_path):
    save_blank_image(tmp_path / "data" / "images" / "a.jpg")
    save_blank_image(tmp_path / "data" / "images" / "b.jpg")
    (tmp_path / "data" / "labels").mkdir()
    result = runner.invoke(app, ["complete", str(tmp_path / "data"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    message = result.output.strip()
    assert len(message.splitlines()) == 1
    assert "2 images without a label" in message and "a.jpg" in message
    assert "pair by file name" in message
    assert not (tmp_path / "out").exists()


def test_labels_named_unlike_their_images_names_one_of_them(tmp_path):
    save_blank_image(tmp_path / "data" / "images" / "frame_001.jpg")
    save_blank_label(tmp_path / "data" / "labels" / "gt_001.png")
    result = runner.invoke(app, ["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--epochs", "1"])
    assert result.exit_code == 2
    message = result.output.strip()
    assert len(message.splitlines()) == 1
    assert "gt_001.png: no image with the same name" in message and "1 image without a label" in message


def test_a_file_given_as_images_is_not_called_missing(tmp_path):
    root = make_paired(tmp_path / "ds", count=1)
    image, label = root / "images" / "scene_000.png", root / "labels" / "scene_000.png"
    result = runner.invoke(app, ["complete", "--images", str(image), "--labels", str(label), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: {image}: not a folder (--images and --labels name the folders that hold them)")
    missing = runner.invoke(app, ["complete", "--images", str(root / "images"), "--labels", str(root / "gts"), "--out", str(tmp_path / "out")])
    assert missing.output.strip() == f"error: {root / 'gts'}: no such folder"


def _band_interleaved_tiff(path, bands: np.ndarray, planar: int = 2) -> None:
    """An uncompressed TIFF with PlanarConfiguration 2 (one plane per band, as GDAL's
    INTERLEAVE=BAND writes; `planar` 1: the bands of a pixel side by side), RGB photometric, extra
    bands unspecified: (H, W, B) uint8 or uint16."""
    import struct

    height, width, count = bands.shape
    little = bands.astype(bands.dtype.newbyteorder("<"))
    planes = ([np.ascontiguousarray(little[..., b]).tobytes() for b in range(count)] if planar == 2
              else [np.ascontiguousarray(little).tobytes()])
    strips = len(planes)
    tags = [(256, 4, [width]), (257, 4, [height]), (258, 3, [bands.dtype.itemsize * 8] * count), (259, 3, [1]),
            (262, 3, [2]), (273, 4, [0] * strips), (277, 3, [count]), (278, 4, [height]),
            (279, 4, [len(planes[0])] * strips), (284, 3, [planar])] + ([(338, 3, [0] * (count - 3))] if count > 3 else [])
    directory_end = 8 + 2 + 12 * len(tags) + 4
    arrays, entries = b"", []
    for tag, kind, values in tags:  # arrays longer than 4 bytes go after the directory, offsets later
        raw = struct.pack("<" + ("H" if kind == 3 else "I") * len(values), *values)
        entries.append([tag, kind, len(values), raw if len(raw) <= 4 else directory_end + len(arrays)])
        if len(raw) > 4:
            arrays += raw
    data_start = directory_end + len(arrays)
    offsets = struct.pack("<" + "I" * strips, *[data_start + b * len(planes[0]) for b in range(strips)])
    strip_entry = next(e for e in entries if e[0] == 273)
    if strips == 1:
        strip_entry[3] = offsets
    else:
        at = strip_entry[3] - directory_end
        arrays = arrays[:at] + offsets + arrays[at + len(offsets):]
    body = b"".join(struct.pack("<HHI", t, k, n) + (v.ljust(4, b"\0") if isinstance(v, bytes) else struct.pack("<I", v))
                    for t, k, n, v in entries)
    path.write_bytes(b"II*\0" + struct.pack("<IH", 8, len(entries)) + body + b"\0\0\0\0" + arrays + b"".join(planes))


def test_a_16_bit_band_interleaved_tiff_is_refused_not_read_as_garbage(tmp_path):
    """A 16-bit RGB (or RGB + NIR) tile saved band-interleaved (GDAL's INTERLEAVE=BAND) was decoded
    by OpenCV into a dim grey smear, and the label repaired from it without a word; it is now
    refused in one line that says how to convert it. The 8-bit one, which PIL reads right, is read."""
    from lmae_repair.data import read_image

    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (24, 32, 3)).astype(np.uint8)
    _band_interleaved_tiff(tmp_path / "rgb8.tif", colour)
    assert np.array_equal(read_image(tmp_path / "rgb8.tif"), colour)
    for name, bands in (("rgb16.tif", colour.astype(np.uint16) * 257),
                        ("rgbn16.tif", np.dstack([colour, colour[..., :1]]).astype(np.uint16) * 257)):
        _band_interleaved_tiff(tmp_path / name, bands)
        with pytest.raises(LmaeError) as refused:
            read_image(tmp_path / name)
        message = str(refused.value)
        assert message.startswith(f"{tmp_path / name}: unreadable image") and "band-interleaved" in message
        assert "INTERLEAVE=PIXEL" in message and "\n" not in message


def test_a_large_16_bit_tile_is_stretched_without_whole_image_float_copies():
    """A 6000x4000 12-bit RGB+NIR TIFF took 34 s and 2 GB of memory to read (float temporaries of
    the whole image, 8 bytes a value); 16-bit values now go through a table of every value, with
    the same result as the float stretch."""
    import tracemalloc

    from lmae_repair.data import stretch_to_8_bits

    values = np.random.default_rng(0).integers(0, 4096, (1500, 1000, 3)).astype(np.uint16)  # 12 bits of 16
    tracemalloc.start()
    rgb = stretch_to_8_bits(values)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 * values.nbytes  # it was 16 times (float64 copies of the whole image)
    low, high = np.percentile(values[::2].reshape(-1).astype(np.float32), [0.1, 99.9])
    expected = np.clip((values.astype(np.float32) - low) * np.float32(255.0 / (high - low)), 0, 255).round().astype(np.uint8)
    assert rgb.dtype == np.uint8 and np.array_equal(rgb, expected)
    signed = np.array([[-300, 0], [1200, 3000]], np.int16)  # a DEM: stretched as floats would be
    assert np.array_equal(stretch_to_8_bits(signed), stretch_to_8_bits(signed.astype(np.float32)))


def test_a_16_bit_mask_of_0_and_65535_is_refused_saying_it_looks_like_a_binary_mask(tmp_path):
    """Some tools save binary masks stretched to 16 bits (0 and 65535): the refusal said only
    'values above 255', leaving the user to guess that the file is a mask to save as 0/1."""
    from lmae_repair.data import read_label
    from lmae_repair.errors import LmaeError

    mask = np.zeros((32, 32), np.uint16)
    mask[8:20, 8:20] = 65535
    Image.fromarray(mask).save(tmp_path / "m.png")
    with pytest.raises(LmaeError, match=r"only 0 and 65535: a binary mask\? save it as 0/1"):
        read_label(tmp_path / "m.png")
    Image.fromarray(np.full((32, 32), 300, np.uint16)).save(tmp_path / "w.png")  # class indices beyond 255: no such hint
    with pytest.raises(LmaeError) as refused:
        read_label(tmp_path / "w.png")
    assert "binary mask" not in str(refused.value)


def test_voc_instance_masks_are_refused_as_class_labels(tmp_path):
    """Pascal VOC's SegmentationObject/ numbers each image's objects in the class labels' palette:
    given as --labels (or left alone where SegmentationClass/ is missing), its instance ids were
    read as classes, and audit advised training a family on them."""
    root = make_voc(tmp_path / "VOCdevkit" / "VOC2012", count=2)
    shutil.copytree(root / "SegmentationClass", root / "SegmentationObject")
    with pytest.raises(LmaeError, match=r"SegmentationObject/ holds object instance ids .*not classes"):
        discover(images=root / "JPEGImages", labels=root / "SegmentationObject")
    shutil.rmtree(root / "SegmentationClass")
    with pytest.raises(LmaeError, match=r"no dataset layout found.*SegmentationObject holds Pascal VOC's object instance ids"):
        discover(tmp_path)
    result = runner.invoke(app, ["audit", str(tmp_path)])
    assert result.exit_code == 2 and "instance ids" in result.output and "Traceback" not in result.output


def as_voc_colours(label_path: Path) -> np.ndarray:
    """Save a label as an RGB image of its Pascal VOC colours, as tools that drop the palette
    do (void 255 as VOC's cream (224, 224, 192)); returns its class indices."""
    from lmae_repair.report import default_palette

    values = np.array(Image.open(label_path))
    values[:4, :4] = 255  # some void, as VOC's borders
    Image.fromarray(default_palette()[values]).save(label_path)
    return values


def test_an_rgb_label_of_voc_colours_in_a_voc_layout_is_read_as_its_class_indices(tmp_path):
    """An RGB label whose every colour is a Pascal VOC colour-map entry was refused as 'colour (RGB)
    label with no palette mapping', in a VOC dataset whose other labels are those colours' indices."""
    from lmae_repair.report import default_palette

    root = make_voc(tmp_path / "voc", count=3)
    path = root / "SegmentationClass" / "2007_000001.png"
    values = as_voc_colours(path)
    label = read_label(path)
    assert np.array_equal(label.values, values) and 255 in values
    assert label.mode == "P" and label.palette == default_palette().reshape(-1).tolist()
    write_label(tmp_path / "out.png", label)  # written back in the palette form of VOC's own labels
    with Image.open(tmp_path / "out.png") as written:
        assert written.mode == "P" and np.array_equal(np.array(written), values)
        assert written.getpalette() == default_palette().reshape(-1).tolist()
    odd = np.array(Image.open(path))
    odd[0, 0] = (10, 200, 30)  # one colour of no VOC entry: not guessed at
    Image.fromarray(odd).save(path)
    with pytest.raises(LmaeError, match="colour \\(RGB\\) label with no palette mapping") as refused:
        read_label(path)
    assert "Pascal VOC" not in str(refused.value)


def test_an_rgb_label_of_voc_colours_outside_a_voc_layout_is_refused_saying_how_to_convert_it(tmp_path):
    """Outside a VOC layout the same colours may mean other classes (CamVid's colours are VOC
    entries too), so the label is refused, but the message says what its colours are and how to
    turn them into indices."""
    root = make_paired(tmp_path / "ds", count=2)
    path = root / "labels" / "scene_000.png"
    as_voc_colours(path)
    with pytest.raises(LmaeError) as refused:
        read_label(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: colour (RGB) label") and "every colour in it is a Pascal VOC colour-map entry" in message
    assert "quantize(palette=" in message and "\n" not in message


def test_a_split_list_giving_paths_finds_the_files_they_end_in(tmp_path):
    """Lists written on Windows or another machine give paths (`JPEGImages\\x`, `C:\\...\\x.jpg`,
    `/Users/...`): each was reported as a pair that "neither this label nor its image exists"."""
    root = make_voc(tmp_path / "voc", count=4, splits={"val": ["2007_000000"]})
    (root / "ImageSets" / "Segmentation" / "val.txt").write_bytes(
        b"\xef\xbb\xbfJPEGImages\\2007_000000\r\nC:\\Users\\Bob Smith\\VOC\\JPEGImages\\2007_000001.jpg\r\n"
        b"/Users/bob/VOC2012/SegmentationClass/2007_000002.png\r\nJPEGImages\\2007_999999.jpg\r\n")
    index = discover(root, split="val")
    assert keys(index) == [f"SegmentationClass/2007_00000{n}.png" for n in range(3)]
    assert len(index.unmatched) == 1 and "2007_999999" in index.unmatched[0]  # a path to nothing is still a failed pair


def test_a_link_up_to_a_folder_above_is_not_followed_back_in(tmp_path):
    """`images/loop -> ..` made every label also an image without a label (`images/loop/labels/x`),
    and a link up from a side folder (`junk/back -> ..`) found each pair 40 times over."""
    root = make_paired(tmp_path / "ds" / "a", count=2).parent
    (root / "a" / "images" / "loop").symlink_to("..", target_is_directory=True)
    (root / "junk").mkdir()
    (root / "junk" / "back").symlink_to("..", target_is_directory=True)
    index = discover(root)
    assert keys(index) == ["a/labels/scene_000.png", "a/labels/scene_001.png"]
    assert index.unmatched == [] and index.unlabelled == []


def test_a_macos_appledouble_file_beside_a_split_list_is_not_read_as_one(tmp_path):
    """A zip made on a Mac holds `._train.txt` beside `train.txt`: binary, read as a split list it
    failed a pair named with its bytes (NULs and all) and made the run exit 1."""
    root = make_voc(tmp_path / "voc", count=4)
    (root / "ImageSets" / "Segmentation" / "._val.txt").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \x00\x00")
    index = discover(root)
    assert index.unmatched == [] and len(index.pairs) == 4
    with pytest.raises(LmaeError, match=r"available splits: train, val\)"):
        discover(root, split="test")


def test_an_image_and_a_label_whose_names_differ_only_in_letter_case_pair_where_unambiguous(tmp_path):
    """`IMG 001.JPG` beside `img 001.png`: one name on Windows and macOS, where the dataset was made,
    but here the label was failed as having "no image with the same name"."""
    rng = np.random.default_rng(0)
    root = tmp_path / "ds"
    image, label = make_scene(rng)
    write_pair(root / "images" / "IMG 001.JPG", root / "labels" / "img 001.png", image, label)
    write_pair(root / "images" / "Train" / "x.jpg", root / "labels" / "train" / "X_mask.png", image, label)
    for name in ("Mix", "mix"):  # exact names still decide
        write_pair(root / "images" / f"{name}.jpg", root / "labels" / f"{name}.png", image, label)
    for name in ("Bb", "bB"):  # two images the label could name: left unpaired
        Image.fromarray(image).save(root / "images" / f"{name}.jpg")
    Image.fromarray(label).save(root / "labels" / "BB.png")
    Image.fromarray(image).save(root / "images" / "Cc.jpg")  # two labels naming one image: left unpaired
    for name in ("cc", "CC"):
        Image.fromarray(label).save(root / "labels" / f"{name}.png")
    index = discover(root)
    assert sorted((p.image.relative_to(root).as_posix(), p.key) for p in index.pairs) == [
        ("images/IMG 001.JPG", "labels/img 001.png"), ("images/Mix.jpg", "labels/Mix.png"),
        ("images/Train/x.jpg", "labels/train/X_mask.png"), ("images/mix.jpg", "labels/mix.png")]
    assert sorted(Path(line.partition(": ")[0]).name for line in index.unmatched) == ["BB.png", "CC.png", "cc.png"]
    assert sorted(Path(line.partition(": ")[0]).name for line in index.unlabelled) == sorted(["Bb.jpg", "bB.jpg", "Cc.jpg"])


def test_jfif_images_pair_and_an_image_in_a_format_not_read_is_named(tmp_path):
    """Windows saves JPEGs as `.jfif`, iPhones photos as `.HEIC`: both labels were failed as having
    "no image with the same name", the image right there."""
    root = make_paired(tmp_path / "ds", count=3)
    Image.open(root / "images" / "scene_000.png").convert("RGB").save(root / "images" / "scene_000.jfif", format="JPEG")
    (root / "images" / "scene_000.png").unlink()
    (root / "images" / "scene_001.png").rename(root / "images" / "scene_001.HEIC")
    (root / "images" / "scene_002.txt").write_text("notes")  # not an image: not named
    (root / "images" / "scene_002.png").unlink()
    index = discover(root)
    assert [p.image.name for p in index.pairs] == ["scene_000.jfif"]
    assert index.unmatched == [
        f"{root / 'labels' / 'scene_001.png'}: no image with the same name ({root / 'images' / 'scene_001.HEIC'} is there, "
        "in a format lmae-repair does not read: save the images as JPEG, PNG, TIFF, BMP or WebP)",
        f"{root / 'labels' / 'scene_002.png'}: no image with the same name"]
    assert read_pair(index.pairs[0])[0].shape == (64, 64, 3)


def test_a_palette_image_with_transparent_entries_is_read_without_pils_warning(tmp_path):
    """A palette PNG with transparency (as GIF-era tools and some exports save images) made PIL
    print a UserWarning naming its own Image.py, twice per image, over the progress bar."""
    import warnings

    path = tmp_path / "x.png"
    rgb = make_scene(np.random.default_rng(0))[0]
    Image.fromarray(rgb).quantize(16).save(path, transparency=bytes([0] * 4 + [255] * 12))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = read_image(path)
    assert [str(w.message) for w in caught] == []
    with Image.open(path) as img:
        img.info.pop("transparency")
        assert np.array_equal(values, np.array(img.convert("RGB")))  # the palette's colours, alpha dropped


def test_a_split_list_of_quoted_paths_as_windows_copies_them_finds_its_pairs(tmp_path):
    """Explorer's "Copy as path" puts each path in double quotes: every such line was a pair that
    "neither this label nor its image exists"."""
    root = make_voc(tmp_path / "voc", count=4, splits={"val": ["2007_000000"]})
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text(
        '"C:\\Users\\Bob Smith\\VOC\\JPEGImages\\2007_000001.jpg"\r\n"2007_000002.jpg"\r\n')
    index = discover(root, split="val")
    assert keys(index) == ["SegmentationClass/2007_000001.png", "SegmentationClass/2007_000002.png"] and index.unmatched == []


def test_a_deleted_copy_in_a_drives_trash_is_not_read_as_data(tmp_path):
    """A USB drive holds what was deleted from it in `.Trash-1000/` (Linux, macOS `.Trashes/`) or
    `$RECYCLE.BIN/` (Windows): an old copy of the images and labels there was found as a second
    set of pairs (hidden folders were left out only below images/ and labels/)."""
    make_paired(tmp_path / "usb" / "ds", count=2)
    make_paired(tmp_path / "usb" / ".Trash-1000" / "files" / "old", count=2)
    make_paired(tmp_path / "usb" / "$RECYCLE.BIN" / "S-1-5-21" / "$R1X2Y3", count=2)
    index = discover(tmp_path / "usb")
    assert keys(index) == ["ds/labels/scene_000.png", "ds/labels/scene_001.png"]


def test_a_split_list_name_differing_from_its_file_only_in_letter_case_names_it(tmp_path):
    """A list typed on Windows (`img_01` for IMG_01.png: one name there) failed the pair as one that
    "neither this label nor its image exists"; where two files differ only in case, it stays failed."""
    root = make_voc(tmp_path / "voc", count=4, splits={"val": ["2007_000000"]})
    for folder, suffix in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png")):
        (root / folder / f"2007_000000{suffix}").rename(root / folder / f"IMG_01{suffix}")
        (root / folder / f"2007_000001{suffix}").rename(root / folder / f"Twin{suffix}")
        (root / folder / f"2007_000002{suffix}").rename(root / folder / f"TWIN{suffix}")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("img_01.JPG\r\ntwin\r\n")
    index = discover(root, split="val")
    assert keys(index) == ["SegmentationClass/IMG_01.png"]
    assert len(index.unmatched) == 1 and "lists twin" in index.unmatched[0]


def test_two_images_of_one_name_are_reported_by_the_label_that_names_them(tmp_path):
    """images/x.jpg and images/x.png beside labels/x.png: the label is the pair left out, so its
    problem line is keyed by it and names both images (it was keyed by x.jpg, which looked like
    the one at fault, and the label itself appeared nowhere); the clash is reported once."""
    rng = np.random.default_rng(0)
    root = tmp_path / "ds"
    image, label = make_scene(rng)
    write_pair(root / "images" / "x.jpg", root / "labels" / "x.png", image, label)
    Image.fromarray(image).save(root / "images" / "x.png")
    write_pair(root / "images" / "b.jpg", root / "labels" / "b.png", image, label)
    index = discover(root)
    assert keys(index) == ["labels/b.png"] and not index.unlabelled
    assert len(index.unmatched) == 1
    line = index.unmatched[0]
    assert line.startswith(f"{root / 'labels' / 'x.png'}: ") and "2 images share its name (x.jpg, x.png" in line, line


def test_a_gif_label_is_named_as_a_failed_pair_not_passed_over(tmp_path):
    """labels/x.gif beside images/x.jpg: the GIF was passed over without a word, and x.jpg
    noted as an image without a label. It is a failed pair now, saying to save it as PNG (a
    palette GIF converts without a value changed), as a JPEG label is; so is x_mask.gif, whose
    image is then not noted as unlabelled either."""
    rng = np.random.default_rng(0)
    root = tmp_path / "ds"
    image, label = make_scene(rng)
    write_pair(root / "images" / "x.jpg", root / "labels" / "b.png", image, label)
    Image.fromarray(image).save(root / "images" / "b.jpg")
    Image.fromarray(image).save(root / "images" / "y.jpg")
    gif = Image.fromarray(label).convert("P")
    gif.save(root / "labels" / "x.gif")
    gif.save(root / "labels" / "y_mask.gif")
    index = discover(root)
    assert keys(index) == ["labels/b.png"] and not index.unlabelled, index.unlabelled
    lines = sorted(index.unmatched)
    assert [line.split(": ")[0] for line in lines] == [str(root / "labels" / "x.gif"), str(root / "labels" / "y_mask.gif")]
    assert all("a GIF label" in line and "save it as PNG" in line for line in lines), lines
    assert [line.image for line in lines] == [root / "images" / "x.jpg", root / "images" / "y.jpg"]


def test_which_tiffs_of_more_than_three_bands_are_read_is_what_the_readme_says(tmp_path):
    """The README said images of more than 4 bands are skipped, but an 8-bit RGB TIFF with two
    more bands (RGB + NIR + a mask, pixel-interleaved) is read, and read right: its first three
    bands. What is refused, in one line saying how to convert it: one of more than 4 bands of
    more than 8 bits, and an 8-bit one of more than 6 bands, which PIL does not decode."""
    from lmae_repair.data import read_image

    rng = np.random.default_rng(0)
    for count in (4, 5, 6):
        bands = rng.integers(0, 256, (24, 32, count)).astype(np.uint8)
        _band_interleaved_tiff(tmp_path / f"{count}.tif", bands, planar=1)
        assert np.array_equal(read_image(tmp_path / f"{count}.tif"), bands[..., :3]), count
    wide = rng.integers(0, 4096, (24, 32, 4)).astype(np.uint16)
    _band_interleaved_tiff(tmp_path / "rgbn16.tif", wide, planar=1)
    assert read_image(tmp_path / "rgbn16.tif").shape == (24, 32, 3)
    for name, bands in (("seven.tif", rng.integers(0, 256, (24, 32, 7)).astype(np.uint8)),
                        ("five16.tif", rng.integers(0, 4096, (24, 32, 5)).astype(np.uint16))):
        _band_interleaved_tiff(tmp_path / name, bands, planar=1)
        with pytest.raises(LmaeError) as refused:
            read_image(tmp_path / name)
        assert str(refused.value).startswith(f"{tmp_path / name}: unreadable image") and "gdal_translate" in str(refused.value)
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    assert "an 8-bit TIFF of RGB and up to 3 more bands is read, its first three bands as RGB" in readme


def test_a_note_of_discovery_is_about_the_data_used_and_said_once(tmp_path):
    """train/ and val/ each with masks/ beside labels/: `--split train` noted val/'s folders too,
    data it never read; each note now comes with the discovery that reads those folders, so
    `train --split train --val-split val` says each folder's note once, and `evaluate --split
    train` says none about val/."""
    root = tmp_path / "ds"
    for split, seed in (("train", 0), ("val", 1)):
        make_paired(root / split, count=2, seed=seed)
        shutil.copytree(root / split / "labels", root / split / "masks")
    assert [note.split(": ")[0] for note in discover(root, split="train").notes] == [str(root / "train" / "labels")]
    result = runner.invoke(app, ["train", str(root), "--split", "train", "--val-split", "val", "--crop", "32", "--epochs", "1",
                                 "--workers", "0", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    said = "".join(result.output.split())  # paths folded at the terminal's width
    for split in ("train", "val"):
        assert said.count(f"{root / split / 'labels'}:takenasthelabels".replace(" ", "")) == 1, (split, result.output)


def test_an_image_named_by_a_failed_label_is_not_also_noted_as_unlabelled(tmp_path):
    """labels/x_mask.png and x_mask.tif (two labels of one name) name images/x.jpg, and their
    problem line says so, yet x.jpg was also noted as having "no label with the same name"; so
    was A.jpg beside a.png and a.tif, and Q.jpg beside a JPEG label q.jpg, whose names differ
    only in letter case (one name on Windows and macOS, where such files pair)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "ds"
    image, label = make_scene(rng)
    write_pair(root / "images" / "ok.jpg", root / "labels" / "ok.png", image, label)
    for name in ("x", "A", "Q"):
        Image.fromarray(image).save(root / "images" / f"{name}.jpg")
    for name in ("x_mask.png", "x_mask.tif", "a.png", "a.tif"):
        Image.fromarray(label).save(root / "labels" / name)
    Image.fromarray(label).convert("RGB").save(root / "labels" / "q.jpg")
    index = discover(root)
    assert keys(index) == ["labels/ok.png"] and index.unlabelled == [], index.unlabelled
    assert {Path(line.partition(": ")[0]).name: line.image.name for line in index.unmatched} == {
        "x_mask.png": "x.jpg", "a.png": "A.jpg", "q.jpg": "Q.jpg"}


def test_a_file_that_is_no_image_is_named_once_in_its_error(tmp_path):
    """A junk Cityscapes _gtFine_labelIds.png gave "failed: <path>: unreadable (cannot identify
    image file '<path>'); ...": PIL's own words repeat the path the line starts with (a junk
    label or image did the same)."""
    from lmae_repair.data import annotated_void

    root = make_cityscapes(tmp_path / "cs")
    label = sorted(root.rglob("*_gtFine_labelTrainIds.png"))[0]
    ids = Path(str(label).replace("labelTrainIds", "labelIds"))
    ids.write_text("junk")
    junk = tmp_path / "junk.png"
    junk.write_text("junk")
    for read, path in ((lambda: annotated_void(label, np.zeros((64, 128), np.uint8)), ids),
                       (lambda: read_label(junk), junk), (lambda: read_image(junk), junk)):
        with pytest.raises(LmaeError) as error:
            read()
        assert str(error.value).startswith(f"{path}: unreadable") and str(error.value).count(path.name) == 1, str(error.value)
        assert "not an image file" in str(error.value)


def test_a_png_labels_pixel_spacing_and_text_are_written_back(tmp_path):
    """SimpleITK writes a CT slice's pixel spacing into the PNG's sCAL chunk (PIL neither reads nor
    writes it): a completed label read back by SimpleITK had a spacing of 1 x 1 beside its image's
    0.7 x 0.75. A PNG label's sCAL, pHYs and text chunks are now written back as they were."""
    import struct
    import zlib

    from PIL import PngImagePlugin

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    def chunks(path: Path) -> dict[bytes, bytes]:
        data, found, position = path.read_bytes(), {}, 8
        while position < len(data):
            length, kind = struct.unpack(">I4s", data[position : position + 8])
            found.setdefault(kind, data[position + 8 : position + 8 + length])
            position += 12 + length
        return found

    values = np.zeros((40, 50), np.uint8)
    values[10:20, 10:30] = 2
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "case001 slice042")
    plain = tmp_path / "plain.png"
    Image.fromarray(values).save(plain, dpi=(36.29, 33.87), pnginfo=text)
    data = plain.read_bytes()
    spacing = chunk(b"sCAL", b"\x01.7\x00.75")  # as SimpleITK writes a spacing of (0.7, 0.75)
    (tmp_path / "slice.png").write_bytes(data[:33] + spacing + data[33:])  # after the signature and IHDR
    label = read_label(tmp_path / "slice.png")
    write_label(tmp_path / "out.png", label)
    before, after = chunks(tmp_path / "slice.png"), chunks(tmp_path / "out.png")
    for kind in (b"sCAL", b"pHYs", b"tEXt"):
        assert after.get(kind) == before[kind], kind
    assert list(after).index(b"sCAL") < list(after).index(b"IDAT")
    assert np.array_equal(read_label(tmp_path / "out.png").values, values)
    write_label(tmp_path / "bare.png", LabelFile(values, "L", None))  # a label without them gets none
    assert not {b"sCAL", b"pHYs", b"tEXt"} & set(chunks(tmp_path / "bare.png"))
    damaged = chunk(b"tEXt", b"Comment\0x")[:-1] + b"\0"  # its CRC spoilt: left out, not copied into a valid file
    (tmp_path / "damaged.png").write_bytes(data[:33] + spacing + data[33:-12] + damaged + data[-12:])
    write_label(tmp_path / "out2.png", read_label(tmp_path / "damaged.png"))
    out = (tmp_path / "out2.png").read_bytes()
    assert chunks(tmp_path / "out2.png")[b"sCAL"] == b"\x01.7\x00.75"
    assert out.count(b"tEXt") == 1 and b"Comment\0x" not in out


def test_a_dicom_or_nifti_slice_beside_a_label_is_named_with_how_to_save_it(tmp_path):
    """A CT team's labels beside their slices as DICOM (`.dcm`) or NIfTI (`.nii.gz`, whose
    Path.suffix is only `.gz`) were failed as having "no image with the same name", the slice
    right there; they are named now, with the format that keeps a slice's 16-bit values."""
    root = make_paired(tmp_path / "ds", count=3)
    (root / "images" / "scene_000.png").rename(root / "images" / "scene_000.dcm")
    (root / "images" / "scene_001.png").rename(root / "images" / "scene_001.nii.gz")
    index = discover(root)
    assert [p.image.name for p in index.pairs] == ["scene_002.png"]
    for name, image in (("scene_000", "scene_000.dcm"), ("scene_001", "scene_001.nii.gz")):
        assert (f"{root / 'labels' / name}.png: no image with the same name ({root / 'images' / image} is there, in a format "
                "lmae-repair does not read: save the images as JPEG, PNG, TIFF, BMP or WebP; a DICOM or NIfTI slice as a "
                "16-bit PNG or TIFF, which is read and stretched to 8 bits)") in index.unmatched, index.unmatched


def test_an_nnunet_raw_dataset_pairs_case_0000_images_with_their_labels_and_names_its_classes(tmp_path):
    """nnU-Net's raw datasets, the usual form of a medical set, hold imagesTr/case_0000.png (the
    first channel) beside labelsTr/case.png and the class names in dataset.json: DATA was "no
    dataset layout found", and --images/--labels paired nothing. Now the folders, the names and
    the classes are read (an `ignore` label, nnU-Net's unannotated value, is void), and
    `complete` copies dataset.json into OUT beside the completed labels."""
    import json

    from lmae_repair.complete import side_files
    from lmae_repair.data import nnunet_class_names

    root = make_paired(tmp_path / "Dataset001_CT", count=3, images="imagesTr", labels="labelsTr")
    make_paired(root, count=1, seed=5, images="imagesTs", labels="labelsTs")
    for image in sorted(root.glob("images*/*.png")):
        image.rename(image.with_name(f"{image.stem}_0000.png"))
    shutil.copy(root / "imagesTr" / "scene_000_0000.png", root / "imagesTr" / "scene_000_0001.png")  # a second channel
    labels = {"background": 0, "liver": 1, "kidney": 2, "ignore": 3}
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": labels, "file_ending": ".png"}))
    index = discover(root)
    assert [pair.key for pair in index.pairs] == ["labelsTr/scene_000.png", "labelsTr/scene_001.png",
                                                 "labelsTr/scene_002.png", "labelsTs/scene_000.png"]
    assert index.pairs[0].image.name == "scene_000_0000.png" and index.unmatched == []
    assert [pair.key for pair in discover(root, split="train").pairs] == [pair.key for pair in index.pairs[:3]]
    assert [pair.key for pair in discover(root, split="test").pairs] == ["labelsTs/scene_000.png"]
    assert index.unlabelled == [] and any("left alone: 1 (first:" in note for note in index.notes)  # noted, not failed
    assert index.known_class_names == ["background", "liver", "kidney", "ignore"]
    space = build_label_space(root, 2, layout_names=index.known_class_names)
    assert (space.num_classes, space.background_id, space.void_id) == (3, 0, 3)
    assert root / "dataset.json" in side_files(index)
    pairs = discover(images=root / "imagesTr", labels=root / "labelsTr").pairs  # named directly: paired the same
    assert [pair.image.name for pair in pairs] == ["scene_000_0000.png", "scene_001_0000.png", "scene_002_0000.png"]
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "tumour"}}))  # the Decathlon's form
    assert nnunet_class_names(root / "dataset.json") == ["background", "tumour"]
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "whole": [1, 2], "core": 2}}))  # regions
    assert nnunet_class_names(root / "dataset.json") is None and discover(root).known_class_names is None


def test_a_class_list_with_void_below_the_classes_names_the_file_and_how_to_renumber_the_labels(tmp_path):
    """1-based organ ids where 0 means "not annotated" (`0 void`, `1 background`, `2 liver`...)
    were refused as 'label space: void value 0 is one of the class values 0..3 (class_0)', naming
    no file, and `complete` advised training a family, which then failed the same way."""
    root = make_paired(tmp_path / "ds", count=2)
    (root / "classes.txt").write_text("0 void\n1 background\n2 liver\n3 kidney\n")
    with pytest.raises(LmaeError) as error:
        build_label_space(root)
    assert str(error.value) == (
        f"{root / 'classes.txt'}: void value 0 is one of the class values 0..3 (classes from 1): lmae-repair needs the classes as the "
        "values 0..N-1 with void above them; remap the labels (classes from 0, e.g. with numpy, "
        "np.where(label == 0, 255, label - 1).astype(np.uint8) into new files, and list `0 background` ... `255 void`)")
    result = runner.invoke(app, ["complete", str(root), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "classes.txt: void value 0 is one of the class values" in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()


def test_pixels_a_tiff_declares_no_data_are_left_out_of_the_stretch(tmp_path):
    """A float reflectance raster with -9999 outside its satellite swath (GDAL's GDAL_NODATA tag)
    was stretched from -9999 to its brightest value: every pixel of the scene came out 255, plain
    white to the model. The declared no-data pixels are left out of the range and drawn black."""
    from PIL import TiffImagePlugin, TiffTags

    from lmae_repair.data import read_image_nodata

    reflectance = np.linspace(0.02, 0.4, 48 * 64, dtype=np.float32).reshape(48, 64)
    reflectance[:, :16] = -9999  # outside the swath
    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[42113] = "-9999"
    tags.tagtype[42113] = TiffTags.ASCII
    Image.fromarray(reflectance).save(tmp_path / "swath.tif", tiffinfo=tags)
    rgb, nodata = read_image_nodata(tmp_path / "swath.tif")
    assert nodata is not None and nodata.sum() == 48 * 16 and nodata[:, :16].all()
    assert (rgb[:, :16] == 0).all()
    scene = rgb[:, 16:, 0].astype(int)
    assert scene.min() < 20 and scene.max() > 90 and scene.std() > 15  # 0.02..0.4 scaled by 255, not all white
    Image.fromarray(reflectance).save(tmp_path / "undeclared.tif")  # nothing says -9999 is no data: as before
    assert read_image_nodata(tmp_path / "undeclared.tif")[1] is None


def test_an_rgb_tiff_of_floats_is_read_and_grey_sample_bands_are_named_for_what_they_are(tmp_path):
    """A 3-band float32 reflectance TIFF (OpenCV or GDAL with PHOTOMETRIC=RGB) failed as "not an
    image file: its contents match no image format", though a one-band float raster was read; a
    4-band 16-bit raster as GDAL writes it (bands as grey samples) got the same false words."""
    import struct

    import cv2

    from lmae_repair.data import image_size

    reflectance = np.zeros((40, 50, 3), np.float32)
    reflectance[..., 0], reflectance[..., 1], reflectance[..., 2] = 0.8, 0.4, 0.1  # R, G, B
    cv2.imwrite(str(tmp_path / "float.tif"), reflectance[..., ::-1])  # OpenCV writes B, G, R
    assert image_size(tmp_path / "float.tif") == (50, 40)
    assert read_image(tmp_path / "float.tif")[5, 5].tolist() == [204, 102, 26]  # 0..1 scaled by 255

    raster = (np.arange(40 * 50 * 4) % 4000).astype(np.uint16).reshape(40, 50, 4)
    cv2.imwrite(str(tmp_path / "bands.tif"), raster)
    data = bytearray((tmp_path / "bands.tif").read_bytes())
    assert data[:2] == b"II"
    ifd = struct.unpack_from("<I", data, 4)[0]
    for entry in range(struct.unpack_from("<H", data, ifd)[0]):  # PhotometricInterpretation RGB -> MINISBLACK, as GDAL writes it
        at = ifd + 2 + 12 * entry
        if struct.unpack_from("<H", data, at)[0] == 262:
            struct.pack_into("<H", data, at + 8, 1)
    (tmp_path / "bands.tif").write_bytes(bytes(data))
    assert image_size(tmp_path / "bands.tif") == (50, 40)
    assert read_image(tmp_path / "bands.tif").shape == (40, 50, 3)  # read as RGB + 1 band (the next test)


def test_a_gdal_multi_band_tiff_of_three_or_four_grey_sample_bands_is_read_as_rgb(tmp_path):
    """GDAL writes a multi-band raster (RGB + near-infrared of 16 bits, the usual satellite tile)
    as grey samples (PHOTOMETRIC=MINISBLACK), which PIL cannot open and OpenCV decodes as one
    garbled band: every such tile was refused. Its first three bands are read as RGB, as those of
    an RGB-tagged TIFF are, and the file is not touched."""
    import struct

    import cv2

    raster = np.zeros((40, 50, 4), np.uint16)  # R, G, B, near-infrared; 0 outside the swath
    raster[..., 0], raster[..., 1], raster[..., 2], raster[..., 3] = 3000, 1500, 100, 4000
    raster[:, :10] = 0
    reference = tmp_path / "rgbn.tif"
    cv2.imwrite(str(reference), raster[..., [2, 1, 0, 3]])  # OpenCV writes B, G, R, A: tagged RGB
    data = bytearray(reference.read_bytes())
    ifd = struct.unpack_from("<I", data, 4)[0]
    for entry in range(struct.unpack_from("<H", data, ifd)[0]):  # as GDAL writes it: grey samples, 3 extra
        at = ifd + 2 + 12 * entry
        tag = struct.unpack_from("<H", data, at)[0]
        if tag == 262:
            struct.pack_into("<H", data, at + 8, 1)
        if tag == 338:
            struct.pack_into("<IHH", data, at + 4, 3, 0, 0)
    (tmp_path / "gdal.tif").write_bytes(bytes(data))
    assert np.array_equal(read_image(tmp_path / "gdal.tif"), read_image(reference))
    assert read_image(tmp_path / "gdal.tif")[5, 20].tolist()[0] == 255
    assert (tmp_path / "gdal.tif").read_bytes() == bytes(data)

    Image.fromarray(np.full((40, 50, 4), (200, 100, 50, 30), np.uint8)).save(tmp_path / "rgba.tif")  # with ExtraSamples
    data = bytearray((tmp_path / "rgba.tif").read_bytes())
    ifd = struct.unpack_from("<I", data, 4)[0]
    for entry in range(struct.unpack_from("<H", data, ifd)[0]):
        at = ifd + 2 + 12 * entry
        if struct.unpack_from("<H", data, at)[0] == 262:
            struct.pack_into("<H", data, at + 8, 1)
    (tmp_path / "grey8.tif").write_bytes(bytes(data))
    assert read_image(tmp_path / "grey8.tif")[0, 0].tolist() == [200, 100, 50]


def test_a_label_whose_name_only_begins_with_its_images_says_how_to_name_it(tmp_path):
    """labels/tile_02-mask.png and labels/tile_04_classes.tif beside images/tile_02.tif and
    images/tile_04.tif were "no image with the same name", and each image "no label with the same
    name", with no word of how names are matched; tile_1 is no beginning of tile_10_a."""
    rng = np.random.default_rng(0)
    root = tmp_path / "ds"
    image, label = make_scene(rng)
    write_pair(root / "images" / "ok.tif", root / "labels" / "ok.png", image, label)
    for name in ("tile_02.tif", "tile_04.tif", "tile_1.tif"):
        Image.fromarray(image).save(root / "images" / name)
    for name in ("tile_02-mask.png", "tile_04_classes.tif", "tile_10_a.png"):
        Image.fromarray(label).save(root / "labels" / name)
    index = discover(root)
    lines = {Path(str(line).partition(": ")[0]).name: str(line) for line in index.unmatched + index.unlabelled}
    assert "rename tile_02-mask.png to tile_02.png to pair them" in lines["tile_02-mask.png"]
    assert "rename tile_02-mask.png to tile_02.png to pair them" in lines["tile_02.tif"]
    assert "rename tile_04_classes.tif to tile_04.tif" in lines["tile_04_classes.tif"] and "_mask" in lines["tile_04_classes.tif"]
    assert lines["tile_10_a.png"].endswith("no image with the same name") and lines["tile_1.tif"].endswith("no label with the same name")


def test_colour_labels_of_a_cvat_labelmap_are_read_by_its_colours_and_written_back_in_them(tmp_path, family):
    """CVAT's segmentation-mask export paints labels in the colours of its `labelmap.txt`
    (`name:r,g,b::`). The colour labels were refused ('no palette mapping') and the class names
    ignored; now the names are the class list, the colours the indices, and the completed
    labels are the same kind of file in the same colours."""
    root = make_paired(tmp_path / "ds", count=2, size=64)
    colours = np.array([[0, 0, 0], [250, 50, 83], [51, 221, 255], [36, 179, 83]], np.uint8)
    (root / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\nrust:250,50,83::\n"
                                       "crack:51,221,255::\nmoss:36,179,83::\n")
    indices = {}
    for path in (root / "labels").glob("*.png"):
        indices[path.name] = np.array(Image.open(path))
        Image.fromarray(colours[indices[path.name]]).save(path)
    assert build_label_space(root, scanned_max_value=3).names == ["background", "rust", "crack", "moss"]
    label = read_label(root / "labels" / "scene_000.png")
    assert label.mode == "RGB" and np.array_equal(label.values, indices["scene_000.png"])
    write_label(tmp_path / "copy.png", label)
    assert np.array_equal(np.array(Image.open(tmp_path / "copy.png")), np.array(Image.open(root / "labels" / "scene_000.png")))
    result = runner.invoke(app, ["complete", str(root), "--models", str(family), "--out", str(tmp_path / "out"), "--min-confidence", "0"])
    assert result.exit_code == 0, result.output
    written = Image.open(tmp_path / "out" / "labels" / "scene_000.png")
    used = {tuple(c) for c in np.array(written).reshape(-1, 3).tolist()}
    assert written.mode == "RGB" and used <= {tuple(c) for c in colours.tolist()}, used
    stray = np.array(Image.open(root / "labels" / "scene_001.png"))
    stray[:2, :2] = (9, 9, 9)
    Image.fromarray(stray).save(root / "labels" / "scene_001.png")
    with pytest.raises(LmaeError, match=r"scene_001.png: colour \(RGB\) label; 1 of its colours are not class colours of .*labelmap.txt \(\(9, 9, 9\)\)"):
        read_label(root / "labels" / "scene_001.png")


def test_a_label_named_like_an_images_first_channel_does_not_take_an_image_its_own_label_names(tmp_path):
    """nnU-Net pairs labels/run.png with images/run_0000.png, its first channel; in a plain
    images/ + labels/ set, run_0000.png has its own label, and the stray run.png beside it made
    run_0000.png fail as '2 labels name this image': a pair that was fine is kept, and run.png
    alone has no image, as before."""
    root = make_paired(tmp_path / "ds", count=2)
    (root / "images" / "scene_000.png").rename(root / "images" / "run_0000.png")
    (root / "labels" / "scene_000.png").rename(root / "labels" / "run_0000.png")
    shutil.copy(root / "labels" / "run_0000.png", root / "labels" / "run.png")
    index = discover(root)
    assert keys(index) == ["labels/run_0000.png", "labels/scene_001.png"]
    assert [line.partition(": ")[2] for line in index.unmatched] == ["no image with the same name"], index.unmatched
    assert index.unmatched[0].startswith(str(root / "labels" / "run.png"))


def test_a_labelmap_that_is_not_the_datasets_class_list_does_not_read_its_colour_labels(tmp_path):
    """A labelmap.txt was looked for up to three folders above a label: one two folders above the
    dataset (another export in the home folder), in labels/, or shadowed by a classes.txt beside
    it painted the labels in its colours while the class names came from elsewhere (or were
    counted), and `complete` wrote colour labels that its OUT, without that labelmap.txt, could not
    read back. Only the labelmap.txt that is the dataset's class list (`find_classes_file`) reads them."""
    colours = np.array([[0, 0, 0], [250, 50, 83], [51, 221, 255]], np.uint8)
    labelmap = "background:0,0,0::\ncrack:250,50,83::\nspalling:51,221,255::\n"
    places = {"above": "", "labels": "labels", "shadowed": ".", "root": "."}
    for case, place in places.items():
        root = make_paired(tmp_path / "ws" / "deep" / case, count=1, size=32) if case == "above" else make_paired(tmp_path / case, count=1, size=32)
        (tmp_path / "ws" / "labelmap.txt" if case == "above" else root / place / "labelmap.txt").write_text(labelmap)
        if case == "shadowed":
            (root / "classes.txt").write_text("background\nspalling\ncrack\n")
        label = root / "labels" / "scene_000.png"
        indices = np.array(Image.open(label)) % 3
        Image.fromarray(colours[indices]).save(label)
        if case == "root":
            assert np.array_equal(read_label(label).values, indices)
        else:
            with pytest.raises(LmaeError, match="colour \\(RGB\\) label with no palette mapping"):
                read_label(label)
    with pytest.raises(LmaeError, match=f"; {tmp_path / 'labels' / 'labels' / 'labelmap.txt'} is not read there: move it to the dataset folder"):
        read_label(tmp_path / "labels" / "labels" / "scene_000.png")


def test_a_labels_exif_orientation_is_written_back(tmp_path):
    """A PNG label saved with its phone photo's EXIF orientation (an eXIf chunk) came back without
    it, so viewers and loaders applying it (`ImageOps.exif_transpose`) turned the photo but not
    the completed label: the same pixels, shown a quarter turn apart."""
    values = np.zeros((40, 50), np.uint8)
    values[10:20, 10:30] = 2
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    Image.fromarray(values).save(tmp_path / "phone.png", exif=exif)
    write_label(tmp_path / "out.png", read_label(tmp_path / "phone.png"))
    with Image.open(tmp_path / "out.png") as written:
        assert written.getexif().get(0x0112) == 6
        assert np.array_equal(np.asarray(written), values)
    write_label(tmp_path / "bare.png", LabelFile(values, "L", None))  # a label without one gets none
    assert b"eXIf" not in (tmp_path / "bare.png").read_bytes()


def test_a_tiff_turned_by_its_orientation_tag_is_refused_not_read_garbled(tmp_path):
    """PIL applies a TIFF's Orientation tag as it decodes (not a JPEG's or PNG's EXIF one), and an
    uncompressed TIFF label tagged 6 came out scrambled: its pair was reported unchanged and the
    label written back so, without the tag. Such TIFFs, labels or images, are now refused, named."""
    root = make_paired(tmp_path / "ds", count=2, size=32)
    label = sorted((root / "labels").iterdir())[0]
    values = np.array(Image.open(label))
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(values).save(label.with_suffix(".tif"), exif=exif)  # stored as its image is, tagged turned
    label.unlink()
    image = sorted((root / "images").iterdir())[1]
    exif[0x0112] = 3
    Image.open(image).save(image.with_suffix(".tif"), exif=exif, compression="tiff_lzw")
    image.unlink()
    pairs = sorted(discover(root).pairs, key=lambda pair: pair.label.name)
    for pair, path, tag in ((pairs[0], label.with_suffix(".tif"), 6), (pairs[1], image.with_suffix(".tif"), 3)):
        with pytest.raises(LmaeError, match=rf"^{re.escape(str(path))}: a TIFF whose Orientation tag \({tag}\)"):
            read_pair(pair)
    exif[0x0112] = 1  # upright: read as it is
    Image.fromarray(values).save(tmp_path / "upright.tif", exif=exif)
    assert np.array_equal(read_label(tmp_path / "upright.tif").values, values)


def test_a_jpeg_label_renamed_to_png_is_refused_as_lossy(tmp_path):
    """A JPEG label renamed x.png was read: JPEG's ringing was blamed as values outside the label
    space, or, where it stayed within it, repaired as exact with its region borders changed. It is
    refused as a .jpg label is, by what the file holds."""
    values = np.zeros((32, 32), np.uint8)
    values[8:24, 8:24] = 3
    Image.fromarray(values).save(tmp_path / "renamed.png", format="JPEG")
    with pytest.raises(LmaeError, match=r"renamed.png: a JPEG file named .png; lossy compression changes class values"):
        read_label(tmp_path / "renamed.png")
    Image.fromarray(values).save(tmp_path / "real.png")
    assert np.array_equal(read_label(tmp_path / "real.png").values, values)


def test_a_16_bit_colour_label_is_refused_not_read_as_its_high_bytes(tmp_path):
    """PIL reads a 16-bit RGB PNG as 8 bits, keeping each value's high byte: a grey label of
    classes 1..10 saved so read as all 0, every class gone, and was repaired and written back so."""
    import cv2

    values = np.zeros((24, 32), np.uint16)
    values[4:12, 4:20] = 3
    cv2.imwrite(str(tmp_path / "wide.png"), np.repeat(values[..., None], 3, axis=2))
    with pytest.raises(LmaeError, match=r"wide.png: 16-bit colour label \(RGB\)"):
        read_label(tmp_path / "wide.png")
    Image.fromarray(values).save(tmp_path / "grey16.png")  # 16-bit grey: read, as before
    assert np.array_equal(read_label(tmp_path / "grey16.png").values, values)


def test_a_colour_label_among_palette_labels_is_told_their_palette(tmp_path):
    """One label of a palette dataset saved as RGB by a tool was refused "with no palette mapping",
    though every colour in it is an entry of its neighbours' palette; the message now names the
    label whose palette maps it and how to save it as indices (a colour it lacks: no such hint)."""
    palette = [0, 0, 0, 200, 30, 30, 30, 200, 30, 30, 30, 200] + [0, 0, 0] * 252
    values = np.zeros((16, 20), np.uint8)
    values[4:10, 2:12], values[10:, 12:] = 1, 3
    indexed = Image.fromarray(values, "P")
    indexed.putpalette(palette)
    (tmp_path / "labels").mkdir()
    indexed.save(tmp_path / "labels" / "a.png")
    indexed.convert("RGB").save(tmp_path / "labels" / "b.png")
    with pytest.raises(LmaeError, match=rf"no palette mapping.*; every colour in it is an entry of the palette of "
                                        rf"{re.escape(str(tmp_path / 'labels' / 'a.png'))}: save it as that palette's indices"):
        read_label(tmp_path / "labels" / "b.png")
    stray = np.asarray(indexed.convert("RGB")).copy()
    stray[0, 0] = (1, 2, 3)
    Image.fromarray(stray).save(tmp_path / "labels" / "c.png")
    with pytest.raises(LmaeError) as error:
        read_label(tmp_path / "labels" / "c.png")
    assert "no palette mapping" in str(error.value) and "entry of the palette" not in str(error.value)


def test_a_split_list_naming_missing_frames_of_one_name_in_two_subfolders_reports_each_in_its_own(tmp_path):
    """A CVAT video export of two sequences lists seq01/frame_000001 and seq02/frame_000001, whose
    labels are missing (unannotated frames): both were one failed pair, named
    SegmentationClass/frame_000001.png, a file of neither sequence."""
    root = tmp_path / "voc"
    rng = np.random.default_rng(0)
    for seq in ("seq01", "seq02"):
        for name in ("frame_000000", "frame_000001"):
            image, label = make_scene(rng)
            write_pair(root / "JPEGImages" / seq / f"{name}.png", root / "SegmentationClass" / seq / f"{name}.png", image, label)
        (root / "SegmentationClass" / seq / "frame_000001.png").unlink()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "default.txt").write_text(
        "".join(f"{seq}/frame_00000{i}\n" for seq in ("seq01", "seq02") for i in (0, 1)))
    index = discover(root)
    assert len(index.pairs) == 2
    assert index.unmatched == [
        f"{root / 'SegmentationClass' / seq / 'frame_000001.png'}: ImageSets/Segmentation/default.txt lists {seq}/frame_000001, "
        "but this label is missing (its image is there)" for seq in ("seq01", "seq02")]
    assert [line.image for line in index.unmatched] == [root / "JPEGImages" / seq / "frame_000001.png" for seq in ("seq01", "seq02")]


def test_the_image_of_a_label_link_to_nothing_is_named_by_that_label_not_also_said_to_have_no_label(tmp_path):
    """Frames linked into a sequence folder, one label link left pointing nowhere: the label was a
    failed pair and its frame also "no label with the same name", as if none had been exported;
    now the frame is reported through its label (as audit's row names it), not twice."""
    root = make_paired(tmp_path / "ds", count=2)
    for folder in ("images", "labels"):
        (root / folder / "seqA").mkdir()
        (root / folder / "scene_001.png").rename(root / folder / "seqA" / "2.png")
    (root / "labels" / "seqA" / "2.png").unlink()
    (root / "labels" / "seqA" / "2.png").symlink_to(tmp_path / "exported" / "2.png")
    index = discover(root)
    assert len(index.pairs) == 1 and index.unlabelled == []
    assert index.unmatched == [f"{root / 'labels' / 'seqA' / '2.png'}: a link to {tmp_path / 'exported' / '2.png'}, which does not exist; left out"]
    assert index.unmatched[0].image == root / "images" / "seqA" / "2.png"


def test_images_of_a_subfolder_the_labels_folder_lacks_say_that_folder_does_not_exist(tmp_path):
    """A video sequence exported as frames but not as labels (images/seq05/ without labels/seq05/):
    each frame was only "no label with the same name", as if its labels were lost one by one."""
    root = make_paired(tmp_path / "ds", count=2)
    (root / "images" / "seq05").mkdir()
    (root / "images" / "scene_001.png").rename(root / "images" / "seq05" / "frame_000001.png")
    (root / "labels" / "scene_001.png").unlink()
    shutil.copy(root / "images" / "scene_000.png", root / "images" / "lost.png")  # a label lost where the folder is there
    index = discover(root)
    assert sorted(index.unlabelled) == [
        f"{root / 'images' / 'lost.png'}: no label with the same name",
        f"{root / 'images' / 'seq05' / 'frame_000001.png'}: no label with the same name ({root / 'labels' / 'seq05'} does not exist)"]


def test_colour_labels_in_a_sequences_nested_subfolder_read_the_datasets_cvat_labelmap(tmp_path):
    """Video frames grouped by video and clip (labels/video1/clip2/frame_000001.png), painted in
    the colours of the dataset's CVAT labelmap.txt: the class names came from it, but the labels
    were refused as colour labels with no palette mapping, the labelmap looked for in
    labels/video1/ and labels/ only; a label one folder down was read."""
    colours = np.array([[0, 0, 0], [250, 50, 83], [51, 221, 255]], np.uint8)
    root = make_paired(tmp_path / "ds", count=1, size=32)
    (root / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\ncrack:250,50,83::\nspalling:51,221,255::\n")
    for folder in ("images", "labels"):
        (root / folder / "video1" / "clip2").mkdir(parents=True)
        (root / folder / "scene_000.png").rename(root / folder / "video1" / "clip2" / "frame_000001.png")
    label = root / "labels" / "video1" / "clip2" / "frame_000001.png"
    indices = np.array(Image.open(label)) % 3
    Image.fromarray(colours[indices]).save(label)
    read = read_label(label)
    assert read.mode == "RGB" and np.array_equal(read.values, indices)


def test_the_palette_of_neighbours_is_looked_up_without_opening_a_fifo_beside_the_label(tmp_path):
    """The hint for a colour label among palette labels opened the label folder's files to find a
    palette; a FIFO named .png among them made `complete` wait forever (found by the robustness
    corpus). Only regular files are opened now; the hint still comes from a palette label."""
    import os
    import threading

    from lmae_repair.data import _folder_palette

    folder = tmp_path / "labels"
    folder.mkdir()
    os.mkfifo(folder / "a_fifo.png")
    palette_label = Image.fromarray(np.zeros((4, 4), np.uint8), mode="L").convert("P")
    palette_label.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
    palette_label.save(folder / "b_palette.png")
    found = []
    worker = threading.Thread(target=lambda: found.append(_folder_palette(folder, 0)), daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert found, "looking up the folder's palette waited on the FIFO"
    assert found[0] is not None and found[0][0].name == "b_palette.png"


def test_a_folder_reached_two_ways_is_named_the_same_way_in_images_and_labels(tmp_path, monkeypatch):
    """`images/latest -> seq01` (and the same in labels/): which name was used hung on the order
    the file system listed the folders in, so images/ and labels/ could each take a different one
    and no pair formed. Folders are now walked in sorted order, whatever the file system says."""
    root = tmp_path / "ds"
    make_paired(tmp_path / "flat", count=2)
    for side in ("images", "labels"):
        (root / side).mkdir(parents=True)
        shutil.move(str(tmp_path / "flat" / side), str(root / side / "seq01"))
        (root / side / "latest").symlink_to("seq01", target_is_directory=True)
    real_walk = os.walk

    def labels_listed_backwards(top, **kwargs):  # a file system that lists labels/ in another order than images/
        for dirpath, dirnames, filenames in real_walk(top, **kwargs):
            if Path(dirpath).name == "labels":
                dirnames.sort(reverse=True)
            elif Path(dirpath).name == "images":
                dirnames.sort()
            yield dirpath, dirnames, filenames

    monkeypatch.setattr(os, "walk", labels_listed_backwards)
    index = discover(root)
    assert len(index.pairs) == 2 and index.unmatched == [] and index.unlabelled == []
    assert keys(index) == sorted(keys(index)) and len({Path(k).parent.name for k in keys(index)}) == 1


@pytest.mark.parametrize("label_size,hint", [
    ((32, 48), "(width and height swapped)"),
    ((96, 64), "(exactly 2x the image's size: resized?)"),
    ((24, 16), "(exactly half the image's size: resized?)"),
    ((16, 32), "$"),
])
def test_a_size_mismatch_says_when_the_label_is_the_image_turned_or_resized(tmp_path, label_size, hint):
    """A label 2x its image, half of it, or with width and height swapped was only 'label is AxB but
    its image is CxD'; the likely cause is now named on the same line (nothing for other sizes)."""
    write_pair(tmp_path / "images" / "a.png", tmp_path / "labels" / "a.png",
               np.zeros((32, 48, 3), np.uint8), np.zeros(label_size[::-1], np.uint8))
    with pytest.raises(LmaeError, match=re.escape(f"label is {label_size[0]}x{label_size[1]} but its image is 48x32")
                       + (re.escape(" " + hint) if hint != "$" else hint)):
        read_pair(discover(tmp_path).pairs[0])


def _grey_png_of_few_bits(path: Path, values: np.ndarray, depth: int) -> None:
    """A grayscale PNG of `depth` (2 or 4) bits per pixel, which PIL cannot write."""
    import struct
    import zlib
    per = 8 // depth
    rows = b""
    for row in values:
        padded = np.concatenate([row, np.zeros(-len(row) % per, row.dtype)]).reshape(-1, per)
        rows += b"\0" + bytes(int(sum(int(v) << (8 - depth * (j + 1)) for j, v in enumerate(group))) for group in padded)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", values.shape[1], values.shape[0], depth, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("depth", [2, 4])
def test_a_grey_png_label_of_2_or_4_bits_is_read_as_its_values_not_scaled_to_255(tmp_path, depth):
    """PIL scales a 2-bit grey PNG's 0..3 to 0/85/170/255 (4-bit: 0..15 to 0, 17, ... 255), and
    such labels were refused as values outside the label space; the stored values are now read."""
    values = (np.arange(35).reshape(5, 7) % 2 ** depth).astype(np.uint8)
    _grey_png_of_few_bits(tmp_path / "few.png", values, depth)
    label = read_label(tmp_path / "few.png")
    assert np.array_equal(label.values, values) and label.mode == "L"


@pytest.mark.parametrize("name", ["anim.png", "anim.webp", "pages.tif"])
def test_an_animated_or_multi_page_image_is_refused_like_such_a_label_not_read_at_its_first_frame(tmp_path, name):
    """An animated PNG or WebP and a TIFF of several pages were read at their first frame without
    a word, though the label may belong to another (a label of that kind is refused); a TIFF whose
    further pages are smaller (a GeoTIFF's overviews, a thumbnail) is still read, as is a JPEG."""
    red, blue = Image.new("RGB", (32, 32), "red"), Image.new("RGB", (32, 32), "blue")
    red.save(tmp_path / name, save_all=True, append_images=[blue], **({"lossless": True} if name.endswith("webp") else {}))
    with pytest.raises(LmaeError, match=re.escape(str(tmp_path / name)) + ": image has 2 (frames|pages) .*save the one"):
        read_image(tmp_path / name)
    red.save(tmp_path / "overview.tif", save_all=True, append_images=[blue.resize((16, 16))])
    assert read_image(tmp_path / "overview.tif")[0, 0].tolist() == [255, 0, 0]
