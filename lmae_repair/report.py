"""What `complete` tells the user: `lmae-report.json` for programs, `lmae-report.html` for people.

The HTML page is self-contained (pictures embedded as data URIs: photos as JPEG, label pictures
as PNG, whose colours must match the legend exactly) so it can be mailed or archived with the
dataset. It shows the most-changed pairs, each as image / original label /
repaired label / changed pixels (the repaired colours over a dimmed image, changed pixels whose
colour hardly differs from the dimmed image outlined in white, so that a class drawn black shows
too), in the labels' own palette when they have one.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from urllib.parse import quote

import cv2
import numpy as np
from PIL import Image

from lmae_repair.data import CITYSCAPES_COLOURS, CITYSCAPES_NAMES, DatasetIndex, absolute_text, LabelFile, atomic_write, read_image, read_label
from lmae_repair.errors import LmaeError
from lmae_repair.labelspace import LabelSpace

REPORT_JSON = "lmae-report.json"
REPORT_HTML = "lmae-report.html"
THUMBNAIL_WIDTH = 320
FAILURES_SHOWN = 50  # failed pairs named in the HTML report; all of them are in the JSON
CHANGED_LISTED = 1000  # changed pairs listed (without pictures) in the HTML report; all of them are in the JSON
VOID_COLOUR = (255, 255, 255)
# the ring drawn around changed regions on the changed-pixels picture: CamVid's sky, drawn black
# (VOC colours: its labels carry no palette), was invisible over the dimmed photo. Changed pixels
# never become void (void is what gets filled), so the ring is not mistaken for a fill.
OUTLINE_COLOUR = (255, 255, 255)
DIMMED = 0.35  # the photo's brightness under the changed pixels
# a fill whose colour differs by less than this (in every channel) from the dimmed photo beneath
# it is ringed: ringing every change buried thin bright fills (road markings) under white lines
HIDDEN_BELOW = 64
# what the captions' terms mean, for a reader who has not read the README: "172 patches rebuilt"
# read as a quarter of the label redrawn, and "mean confidence 0.46" as a doubtful repair
HOW_TO_READ = (
    "How to read it: each label is cut into small squares (patches). The model chosen for a label (by its <i>mask ratio</i>, "
    "the share of patches it rebuilds, which follows how much of the label is background or void; the <i>objects model</i> "
    "where the gaps follow the outlines of things in the image) predicts the rebuilt patches anew, but only their void or "
    "background pixels may change: annotated pixels keep their class (unless --overwrite-labeled was given). "
    "<i>Mean confidence</i> is the model's average probability for the classes it wrote: void is filled whatever it is, "
    "background only where the model is at least --min-confidence sure (0.9 unless set). On the <i>changed pixels</i> picture, "
    "changed pixels whose colour would hardly show over the dimmed image (a class drawn black) are outlined in white. The labels as given are untouched; "
    "look at the changed pixels before using the completed copy."
)


def report_totals(entries: list[dict], seconds: float, resumed: int) -> dict:
    """Counts over all pairs; `resumed` pairs were finished by an earlier run into the same OUT."""
    by_ratio: dict[str, int] = {}
    for entry in entries:
        if entry.get("mask_ratio") is not None:
            key = f"{entry['mask_ratio']:.2f}" + (" (objects)" if entry.get("gap_kind") == "objects" else "")
            by_ratio[key] = by_ratio.get(key, 0) + 1
    unpaired = sum(1 for e in entries if e.get("input_label") is None)  # a pair always has its label; an unpaired file may name its image
    processed = len(entries) - resumed - unpaired  # the pairs this run worked on
    return {
        "pairs": len(entries) - unpaired,
        "unpaired": unpaired,  # files discovery could not pair: listed (and counted as failed), not pairs
        # a pair repaired in memory whose output could not be written is failed, not repaired:
        # repaired + unchanged + failed is every entry, and the pixels changed are those in OUT
        "repaired": sum(1 for e in entries if e["pixels_changed"] > 0 and not e["error"]),
        "unchanged": sum(1 for e in entries if e["pixels_changed"] == 0 and not e["error"]),
        "failed": sum(1 for e in entries if e["error"]),
        "resumed": resumed,
        "pixels_changed": sum(e["pixels_changed"] for e in entries if not e["error"]),
        "pixels": sum(e.get("pixels") or 0 for e in entries),
        "pairs_by_mask_ratio": dict(sorted(by_ratio.items())),
        "read_shrunk": sum(1 for e in entries if e.get("read_at")),
        "seconds": round(seconds, 2),
        "pairs_per_second": round(processed / seconds, 2) if seconds > 0 and processed else None,
    }


def json_report(index: DatasetIndex, entries: list[dict], totals: dict, checkpoints) -> dict:
    """What lmae-report.json holds (written by `complete.write_reports`)."""
    return {
        "data": str(index.root),
        "data_root": str(index.root.resolve()),  # which dataset OUT holds: another is refused
        "layout": index.layout,
        "checkpoints": [{"path": absolute_text(path), "mask_ratio": info.mask_ratio, "gap_kind": info.gap_kind} for path, info in checkpoints],
        "totals": totals,
        "pairs": entries,
        "unlabelled_images": index.unlabelled,
    }



def default_palette(count: int = 256) -> np.ndarray:
    """The Pascal VOC colour map (bit-interleaved), for labels that carry no palette."""
    colours = np.zeros((count, 3), dtype=np.uint8)
    for value in range(count):
        r = g = b = 0
        c = value
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours[value] = (r, g, b)
    return colours


def known_palette(space: LabelSpace) -> list[int] | None:
    """The palette a known dataset draws its classes in, where the label space is its (Cityscapes'
    19 train ids, whose grey label files carry no palette: in VOC colours road was black and
    building green); None for other label spaces."""
    names = [name.strip().lower().replace(" ", "_") for name in space.names]
    return [value for colour in CITYSCAPES_COLOURS for value in colour] if names == CITYSCAPES_NAMES else None


def colour_table(space: LabelSpace, palette: list[int] | None) -> np.ndarray:
    """(256, 3) colours: the label file's palette, else the label space's, else the known
    dataset's (`known_palette`), else VOC colours."""
    colours = default_palette()
    source = palette or space.palette or known_palette(space)
    if source:
        given = np.array(source[: 256 * 3], dtype=np.uint8).reshape(-1, 3)
        colours[: len(given)] = given
    if not source or len(source) < 3 * (space.void_id + 1):
        colours[space.void_id] = VOID_COLOUR
    return colours


def _shrunk(rgb: np.ndarray, width: int = THUMBNAIL_WIDTH) -> np.ndarray:
    """`rgb` at most `width` pixels wide (nearest neighbour: label colours stay exact)."""
    img = Image.fromarray(rgb)
    if img.width > width:
        img = img.resize((width, max(1, round(img.height * width / img.width))), Image.NEAREST)
    return np.asarray(img).copy()


def _marked_where(small_shape: tuple[int, int], marked: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rows, columns) of the `marked` pixels, and where each falls on a picture of `small_shape`."""
    ys, xs = np.nonzero(marked)
    ty = np.minimum(ys * small_shape[0] // marked.shape[0], small_shape[0] - 1)
    tx = np.minimum(xs * small_shape[1] // marked.shape[1], small_shape[1] - 1)
    return ys, xs, ty, tx


def _keep_marked(small: np.ndarray, full: np.ndarray, marked: np.ndarray) -> np.ndarray:
    """`small`, a shrunk `full`, with every `marked` pixel of `full` painted where it falls: nearest
    neighbour keeps one pixel in (scale x scale), so a thin crack filled in a 2400-pixel-wide
    label showed as a few scattered dots on the changed-pixels picture, or not at all."""
    if small.shape[:2] == full.shape[:2]:
        return small
    ys, xs, ty, tx = _marked_where(small.shape[:2], marked)
    small[ty, tx] = full[ys, xs]
    return small


def _outlined(small: np.ndarray, marked: np.ndarray) -> np.ndarray:
    """`small` with a one-pixel `OUTLINE_COLOUR` ring around the regions of the `marked` pixels (of
    the full-size picture, wherever they fall on `small`), so that a fill in a colour close to
    the dimmed photo's, black, shows. Drawn on the thumbnail: the ring stays one pixel thin."""
    inside = np.zeros(small.shape[:2], np.uint8)
    _, _, ty, tx = _marked_where(small.shape[:2], marked)
    inside[ty, tx] = 1
    ring = cv2.dilate(inside, np.ones((3, 3), np.uint8)).astype(bool) & ~inside.astype(bool)
    small[ring] = OUTLINE_COLOUR
    return small


PHOTO_QUALITY = 85  # JPEG quality of the photo panels: 12 CamVid pairs' photos took 2 MB as PNG, 0.34 MB so
# zlib level of the PNG panels: the changed-pixels picture (a dimmed photo) took 27.5 ms at PIL's
# default 6 and 7.2 ms at 1 for 8% more bytes (a 320x240 CamVid thumbnail, one core): a quarter
# of a second of every run's report for 12 pairs. Lossless either way: the colours stay exact.
PNG_LEVEL = 1


def _data_uri(rgb: np.ndarray, photo: bool = False) -> str:
    """`rgb` as a data URI: a `photo` as JPEG (a twelfth of the PNG's size for a camera frame),
    anything drawn in label colours as PNG, which keeps them exact."""
    buffer = io.BytesIO()
    if photo:
        Image.fromarray(rgb).convert("RGB").save(buffer, format="JPEG", quality=PHOTO_QUALITY)
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def pair_panels(image: np.ndarray, original: np.ndarray, repaired: np.ndarray, colours: np.ndarray) -> list[np.ndarray]:
    """Image, original label, repaired label, and the changed pixels in their new colour over a
    dimmed image, as RGB arrays of the label's size."""
    changed = repaired != original
    overlay = (image * DIMMED).astype(np.uint8)
    overlay[changed] = colours[repaired[changed]]
    return [image, colours[original], colours[repaired], overlay]


def outline_hidden(picture: np.ndarray, overlay: np.ndarray, image: np.ndarray, changed: np.ndarray) -> np.ndarray:
    """`picture` (`overlay`, a `pair_panels` changed-pixels picture, or a shrunk copy of it) with
    the `changed` pixels whose colour hardly differs from the dimmed `image` beneath ringed
    (`_outlined`, `HIDDEN_BELOW`): a class drawn black (CamVid's sky, labels without a palette)
    showed nowhere. Shared by the HTML report and audit's heatmaps, which draw the same overlay."""
    dimmed = (image * DIMMED).astype(np.int16)
    hidden = changed & (np.abs(overlay.astype(np.int16) - dimmed).max(axis=2) < HIDDEN_BELOW)
    return _outlined(picture, hidden)


def pair_pictures(image: np.ndarray, original: np.ndarray, repaired: np.ndarray, colours: np.ndarray) -> list[str]:
    """`pair_panels` as data URIs of thumbnails, for the HTML report; the changed pixels stay
    visible on the last one however much it is shrunk, and whatever their colour: those that
    would hardly differ from the dimmed photo beneath are ringed (`outline_hidden`)."""
    panels = pair_panels(image, original, repaired, colours)
    thumbnails = [_shrunk(panel) for panel in panels]
    changed = repaired != original
    thumbnails[3] = outline_hidden(_keep_marked(thumbnails[3], panels[3], changed), panels[3], image, changed)
    return [_data_uri(thumbnail, photo=number == 0) for number, thumbnail in enumerate(thumbnails)]


def _legend(space: LabelSpace, colours: np.ndarray) -> str:
    items = [(name, colours[i]) for i, name in enumerate(space.names)] + [(f"void ({space.void_id}: not annotated)", colours[space.void_id])]
    return " ".join(
        f'<span class="key"><i style="background:rgb{tuple(int(c) for c in colour)}"></i>{html.escape(name)}</span>'
        for name, colour in items
    )


def load_shown_pairs(entries: list[dict]) -> list[tuple[dict, np.ndarray, LabelFile, np.ndarray]]:
    """(entry, image, original label, repaired values) of each pair to picture; a pair whose files
    were moved or deleted since the run is left out of the page."""
    shown = []
    for entry in entries:
        try:
            image = read_image(Path(entry["image"]))
            original = read_label(Path(entry["input_label"]))
            repaired = read_label(Path(entry["output"])).values
        except LmaeError:
            continue
        shown.append((entry, image, original, repaired))
    return shown


def page_colours(space: LabelSpace, labels: list[LabelFile]) -> np.ndarray:
    """One colour table for every picture of the page, so that the legend holds for all of them:
    the palette of the first label that has one (else the label space's). Each label drawn in its
    own colours gave a grey label VOC colours beside palette labels the legend described."""
    palette = next((label.palette for label in labels if label.palette), None)
    return colour_table(space, palette)


def _link(out: Path, entry: dict) -> str:
    """The pair's label name as a link to its repaired label, relative to the report in `out`, so
    that it opens from the page wherever OUT is moved or mounted; a name that is not UTF-8 keeps
    its bytes in the address."""
    target = os.path.relpath(entry["output"], out).replace(os.sep, "/")
    href = quote(target, errors="surrogateescape")
    return f'<a href="{html.escape(href)}">{html.escape(entry["label"])}</a>'


def _share(entry: dict) -> float:
    return entry["pixels_changed"] / max(entry.get("pixels") or 1, 1)


def _percent(share: float) -> str:
    """A share as a percentage, never "0.0%" for a label that did change."""
    return "<0.1%" if 0 < share < 0.0005 else f"{share:.1%}"


def _model_text(entry: dict) -> str:
    return f"mask ratio {entry['mask_ratio']:.2f}{' (objects model)' if entry.get('gap_kind') == 'objects' else ''}"


def _resumed_text(totals: dict) -> str:
    """" (4 of them done by an earlier run into this folder)", as the printed summary says, where
    a rerun took pairs as an interrupted run wrote them; else empty."""
    resumed = totals.get("resumed") or 0
    return f" ({resumed} of them done by an earlier run into this folder)" if resumed else ""


def _shown_text(pictured: int) -> str:
    """What the page pictures: a run that changed no label (one pair, already complete) said
    "The 0 most-changed pairs are shown ... and every changed label is listed below them"."""
    if not pictured:
        return "No label was changed, so none is pictured"
    return (f"The {pictured} most-changed pair{'s are' if pictured > 1 else ' is'} shown (share of pixels changed, largest first; "
            "a label's name opens its repaired file), and every changed label is listed below them")


def changed_pairs_list(out: Path, entries: list[dict], limit: int = CHANGED_LISTED) -> str:
    """Every changed pair (the first `limit`), most changed first, without pictures: a curator
    sees which labels the run changed, and opens them, without reading the JSON."""
    if not entries:
        return ""
    rows = "".join(
        f'<tr><td>{_link(out, entry)}</td><td class="n">{entry["pixels_changed"]:,}</td><td class="n">{_percent(_share(entry))}</td>'
        f'<td>{_model_text(entry)}</td><td class="n">{entry["mean_confidence"] or 0:.2f}</td></tr>'
        for entry in entries[:limit]
    )
    more = f"<p>... and {len(entries) - limit} more (all in {REPORT_JSON}).</p>" if len(entries) > limit else ""
    return (f'<h2>All changed labels ({len(entries)})</h2><table class="list"><tr><th>label (opens the repaired file)</th>'
            f'<th>pixels changed</th><th>share</th><th>model</th><th>mean confidence</th></tr>{rows}</table>{more}')


def write_html_report(out: Path, report: dict, space: LabelSpace, top: int = 12) -> Path:
    """The `top` most-changed pairs of the report, pictured; returns the page's path."""
    entries = [e for e in report["pairs"] if e["pixels_changed"] > 0 and e.get("output")]
    entries.sort(key=_share, reverse=True)
    pictured = load_shown_pairs(entries[:top])
    colours = page_colours(space, [original for _, _, original, _ in pictured])
    rows = []
    for entry, image, original, repaired in pictured:
        pictures = pair_pictures(image, original.values, repaired, colours)
        caption = (
            f"{_link(out, entry)}: {entry['pixels_changed']:,} pixels changed ({_percent(_share(entry))}), "
            f"{_model_text(entry)}, {entry['patches_masked']} patches rebuilt"
            f"{' at ' + entry['read_at'] + ' (the models&#x27; scale)' if entry.get('read_at') else ''}, "
            f"mean confidence {entry['mean_confidence'] or 0:.2f}"
        )
        cells = "".join(f'<td><img src="{uri}"></td>' for uri in pictures)
        rows.append(f'<tr><th colspan="4">{caption}</th></tr><tr>{cells}</tr>')
    totals = report["totals"]
    count = totals.get("unpaired", 0)
    unpaired = f"; {count} file{'s' if count > 1 else ''} that could not be paired" if count else ""
    legend = _legend(space, colours)
    pixel_share = f" ({totals['pixels_changed'] / totals['pixels']:.2%} of all pixels)" if totals.get("pixels") else ""
    body = "\n".join(rows) or '<tr><td colspan="4">No label was changed.</td></tr>'
    errors = [entry["error"] for entry in report["pairs"] if entry["error"]]
    failures = ""
    if errors:  # named here too: a curator reading the page should not have to open the JSON
        shown = "".join(f"<li>{html.escape(error)}</li>" for error in errors[:FAILURES_SHOWN])
        more = f"<li>... and {len(errors) - FAILURES_SHOWN} more (all in {REPORT_JSON})</li>" if len(errors) > FAILURES_SHOWN else ""
        failures = f"<h2>Failed pairs ({len(errors)})</h2><ul>{shown}{more}</ul>"
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>lmae-repair report: {html.escape(report['data'])}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }} td, th {{ padding: 4px; text-align: left; vertical-align: top; }}
th {{ font-weight: normal; padding-top: 1.2em; }} img {{ image-rendering: pixelated; max-width: {THUMBNAIL_WIDTH}px; }}
.list td, .list th {{ padding: 2px 8px; }} .list .n {{ text-align: right; }} .list th {{ font-weight: bold; }}
.key {{ margin-right: 1em; white-space: nowrap; }} .key i {{ display: inline-block; width: 1em; height: 1em; margin-right: .3em; vertical-align: middle; border: 1px solid #999; }}
</style></head><body>
<h1>lmae-repair: {html.escape(report['data'])}</h1>
<p>{totals['pairs']} pair{'' if totals['pairs'] == 1 else 's'}{_resumed_text(totals)}: {totals['repaired']} repaired, {totals['unchanged']} unchanged, {totals['failed'] - count} failed{unpaired};
{totals['pixels_changed']:,} pixels changed{pixel_share}. {_shown_text(len(pictured))}; the full report, unchanged and failed pairs included, is in {REPORT_JSON}.</p>
<p>{HOW_TO_READ}</p>
{failures}
<p>{legend}</p>
<table>
<tr><th>image</th><th>original label</th><th>repaired label</th><th>changed pixels</th></tr>
{body}
</table>
{changed_pairs_list(out, entries)}
</body></html>
"""
    path = out / REPORT_HTML
    # a file name that is not UTF-8 (Python keeps its bytes as surrogates) is shown with a
    # replacement character rather than failing the whole report
    atomic_write(path, lambda f: f.write(page.encode("utf-8", errors="replace")))
    return path
