"""Checkpoint families on the Hugging Face Hub.

A family on the Hub has the layout of a local `models/<family>/` folder: one
`mask-<ratio>.safetensors` per mask ratio (the metadata inside each file says everything else)
and a `README.md` model card. So `--models hf://owner/name` (or `owner/name@revision`) downloads
the repository's snapshot with huggingface_hub into its usual cache and hands the folder to the
same resolver as a local family. huggingface_hub itself honours `HF_TOKEN` (private repositories)
and `HF_HUB_OFFLINE=1` (use the cache only), so a family fetched once works offline.

`lmae-repair push RUN_DIR owner/name` builds that layout from a training run (the best
checkpoint of each ratio, half precision) with a generated model card (a family folder's own
README.md instead, where it has one), and uploads it in one commit.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from lmae_repair.errors import DEBUG, LmaeError

HUB_PREFIX = "hf://"
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
FAMILY_FILES = ["*.safetensors", "README.md"]
FRONT_MATTER = "---\nlibrary_name: lmae-repair\ntags: [semantic-segmentation, label-repair, masked-autoencoder]\n---\n"


def is_hub_spec(spec: str) -> bool:
    """`hf://owner/name[@revision]`, or `owner/name[@revision]` that is not a local path."""
    text = str(spec)
    if text.startswith(HUB_PREFIX):
        return True
    return bool(_REPO.match(text)) and not Path(text).exists()


def parse_hub_spec(spec: str) -> tuple[str, str | None]:
    """(repository id, revision or None)."""
    text = str(spec).removeprefix(HUB_PREFIX)
    repo_id, _, revision = text.partition("@")
    if not _REPO.match(repo_id):
        raise LmaeError(f"{spec}: expected a Hub repository as hf://owner/name or owner/name@revision")
    return repo_id, revision or None


def push_target(spec: str) -> str:
    """The repository `push` uploads to, as `owner/name`. `hf://owner/name`, the form `--models`
    takes, was sent as it stood: the card told users to run `--models hf://hf://owner/name`, and
    the Hub was asked to create a repository of that name. A revision is refused: the commit goes
    to the main branch, which `--models hf://owner/name` reads."""
    repo_id, revision = parse_hub_spec(spec)
    if revision:
        raise LmaeError(f"{spec}: push uploads to the repository's main branch; give {repo_id} without @{revision}")
    return repo_id


def fetch_family(spec: str) -> Path:
    """The local folder of the family `spec` on the Hub (downloaded into the huggingface_hub cache,
    or taken from it when offline)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError, LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError,
    )

    repo_id, revision = parse_hub_spec(spec)
    local = "" if str(spec).startswith(HUB_PREFIX) else " (nor a local file, folder or bundled family of that name)"
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=FAMILY_FILES))
    except (RepositoryNotFoundError, GatedRepoError):
        raise LmaeError(f"{spec}: no such model repository on the Hub, or no access to it (set HF_TOKEN for a private one){local}") from None
    except RevisionNotFoundError:
        raise LmaeError(f"{spec}: the repository has no revision {revision!r}") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        raise LmaeError(not_cached(spec, repo_id, revision, exc, local)) from None
    except OSError as exc:
        raise LmaeError(f"{spec}: download failed ({exc})") from None
    except Exception as exc:  # the HTTP client's own errors (no network, DNS): its classes vary by version
        if DEBUG["on"]:
            raise
        raise LmaeError(f"{spec}: download failed ({type(exc).__name__}: {first_line(exc)}); check the network") from None


def cached_family(spec: str) -> Path | None:
    """The folder of the family `spec` in the local huggingface_hub cache, or None where it is not
    there (nothing is downloaded): for commands that read local files only, to say where it is."""
    from huggingface_hub import snapshot_download

    try:
        repo_id, revision = parse_hub_spec(spec)
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=FAMILY_FILES, local_files_only=True))
    except Exception:  # not cached, or a malformed spec: either way there is no local copy to name
        return None


def cache_folder_name(repo_id: str) -> str:
    """The folder of the huggingface_hub cache that holds `repo_id` (models--owner--name), as
    huggingface_hub names it."""
    from huggingface_hub.file_download import repo_folder_name

    return repo_folder_name(repo_id=repo_id, repo_type="model")


def cached_repo_of(path: Path) -> str | None:
    """The Hub repository (owner/name) whose copy in the huggingface_hub cache holds `path`, or
    None. The cache keeps a repository at `models--owner--name/snapshots/<commit>/`, its files
    links into `blobs/`: a file written there in place (`tune` without --out) replaced the link
    and silently changed what `hf://owner/name` means on this machine, against the commit's own
    files."""
    parts = Path(os.path.abspath(path)).parts
    for i in range(len(parts) - 2):
        if parts[i].startswith("models--") and parts[i + 1] == "snapshots":
            owner, _, name = parts[i].removeprefix("models--").partition("--")
            return f"{owner}/{name}" if owner and name else None
    return None


def not_cached(spec: str, repo_id: str, revision: str | None, exc: Exception, local: str) -> str:
    """Why a family could not be had from the Hub nor from the cache. The Hub unreachable and
    HF_HUB_OFFLINE are told apart (the message said "or unset HF_HUB_OFFLINE" where nothing had
    set it, the network being down), and a repository cached at another revision is named as such
    rather than as absent."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        why, remedy = "HF_HUB_OFFLINE is set", "fetch it once with HF_HUB_OFFLINE unset and the Hub reachable"
    else:
        cause = exc.__cause__ or exc.__context__
        why = "the Hub cannot be reached" + (f" ({type(cause).__name__}: {first_line(cause)})" if cause else "")
        remedy = "fetch it once where the Hub can be reached"
    refs = Path(constants.HF_HUB_CACHE) / cache_folder_name(repo_id) / "refs"
    cached = sorted(ref.name for ref in refs.iterdir() if ref.is_file()) if refs.is_dir() else []
    if cached and (revision or "main") not in cached:
        prefix = HUB_PREFIX if str(spec).startswith(HUB_PREFIX) else ""
        return (f"{spec}: the local Hugging Face cache holds {repo_id} at {', '.join(cached)} but not at {revision or 'main'}, "
                f"and {why}: {remedy}, or name a cached revision ({prefix}{repo_id}@{cached[0]})")
    if local:  # a path that does not exist reads like owner/name: say the likelier problem first
        return (f"{spec}: no such local file, folder or bundled family, and no Hub repository of that name "
                f"in the local Hugging Face cache, and {why}")
    return f"{spec}: not in the local Hugging Face cache, and {why}: {remedy}"


def first_line(exc: Exception) -> str:
    """An exception's message in one line (an HTTP client's may run to a page)."""
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def figures_of_another_family(result: dict, run_dir: Path) -> str | None:
    """Why an `evaluate --json` result is not about the family in `run_dir`, or None: every
    checkpoint it names that still exists must have the contents of one of the family's files
    (a card must not publish another family's figures)."""
    from lmae_repair.complete import file_digest
    from lmae_repair.families import find_checkpoints

    ours = {file_digest(path) for path, _ in find_checkpoints([run_dir])}
    for name in result.get("models", []):
        if Path(name).is_file() and file_digest(Path(name)) not in ours:
            return f"its figures are of {name}, which is not one of {run_dir}'s checkpoints"
    return None


def model_card(repo_id: str, checkpoints) -> str:
    """README.md for a family: label space, mask ratios, how it was trained, its validation
    figures and how to use it."""
    first = checkpoints[0][1]
    space = first.label_space
    lines = [
        FRONT_MATTER,
        f"# {repo_id}: an lmae-repair checkpoint family", "",
        "Label Masked Autoencoder (L-MAE) checkpoints that complete broken semantic-segmentation labels "
        "(missed objects, unfinished annotation), one per mask ratio, for "
        "[lmae-repair](https://pypi.org/project/lmae-repair/).", "",
        "```bash", f"lmae-repair complete DATA --models hf://{repo_id} --out DATA-completed",
        f"lmae-repair evaluate DATA --models hf://{repo_id}", "```", "",
        "## Label space", "", f"{space.describe()}.", "",
        "## Checkpoints", "",
        "| file | mask ratio | parameters (config) | validation |", "| --- | --- | --- | --- |",
    ]
    slots: dict = {}
    for path, info in checkpoints:  # a file serving several slots: one row listing them all
        slots.setdefault(path, []).append(info)
    for path, infos in slots.items():
        info = infos[0]
        figures = ", ".join(f"{k} {v}" for k, v in info.validation.items() if k.startswith("val_")) or "-"
        config = f"patch {info.model.patch_size}, encoder {info.model.enc_depth}x{info.model.enc_dim}, decoder {info.model.dec_depth}x{info.model.dec_dim}"
        gaps = " (gaps that follow the image's edges: missed objects)" if info.gap_kind == "objects" else ""
        ratios = ", ".join(f"{r:.2f}" for r in sorted({i.mask_ratio for i in infos}))
        lines.append(f"| `{path.name}` | {ratios}{gaps} | {config} | {figures} |")
    lines += ["", "## Training", ""]
    made: dict = {}  # files made alike (a run's ratios) share one account; a family of several runs, one each
    for path, infos in slots.items():
        made.setdefault(tuple(training_lines(infos[0])), []).append(f"`{path.name}`")
    for account, names in made.items():
        if len(made) > 1:
            lines += [f"{', '.join(names)}:", ""]
        lines += [*account, ""]
    lines += ["Layout: the same as a local `models/<family>/` folder of lmae-repair; every file carries its "
              "architecture, label space and training summary in its safetensors metadata "
              "(`lmae-repair inspect FILE`).", ""]
    return "\n".join(lines)


def training_lines(info) -> list[str]:
    """How one file was made, as model card lines: its training run, the checkpoint it was
    fine-tuned from, the epochs averaged into it and the offsets it was tuned with."""
    from lmae_repair.checkpoints import continuation_text, offsets_text

    training = info.training
    lines = [f"- {key}: `{training[key]}`" for key in
             ("command", "data", "layout", "split", "pairs", "preset", "epochs", "crop", "device", "train_seconds", "init")
             if training.get(key) is not None]
    if training.get("averaged_from"):
        lines.append(f"- averaged: the weights of {len(training['averaged_from'])} checkpoints "
                     f"({', '.join(Path(p).name for p in training['averaged_from'])})")
    if any(info.class_bias):
        lines.append("- class offsets (`lmae-repair tune`): " + offsets_text(info.label_space.names, info.class_bias))
    if any(info.continuation):
        lines.append("- continuation bonuses (`lmae-repair tune`): " + continuation_text(info.continuation))
    return lines


def prepare_staging(staging: Path) -> None:
    """Make `push --staging` ready to build into. Everything in it is uploaded, so a folder holding
    anything else is refused: the user's own README.md was overwritten by the model card, and
    other files went up with the family. An earlier push's staging (the model card and
    checkpoints) is emptied first, so that a checkpoint of another run left there does not go up."""
    if staging.exists() and not staging.is_dir():
        raise LmaeError(f"{staging}: --staging names a file; give a new or empty folder")
    staging.mkdir(parents=True, exist_ok=True)
    entries = sorted(staging.iterdir())
    card = staging / "README.md"
    earlier = card.is_file() and card.read_text(encoding="utf-8", errors="replace").startswith(FRONT_MATTER) and all(
        entry == card or (entry.is_file() and entry.suffix == ".safetensors") for entry in entries)
    if entries and not earlier:
        names = ", ".join(entry.name for entry in entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise LmaeError(f"{staging}: --staging holds other files ({names}), and everything in it is uploaded; "
                        "give a new or empty folder")
    for entry in entries:
        entry.unlink()


def build_upload(run_dir: Path, repo_id: str, staging: Path, evaluate_figures: str | None = None) -> list:
    """The commit operations that `push` sends: the family files written to `staging` in the local
    family layout, and the model card. Nothing is sent here."""
    from huggingface_hub import CommitOperationAdd

    from lmae_repair.families import export_family, find_checkpoints

    repo_id = push_target(repo_id)
    export_family(run_dir, staging)
    checkpoints = find_checkpoints([staging])
    own = Path(run_dir) / "README.md"
    if own.is_file():  # a family folder with its own model card (the bundled ones): that card goes up
        card = FRONT_MATTER + "\n" + own.read_text(encoding="utf-8")
    else:
        card = model_card(repo_id, checkpoints)
    if evaluate_figures:
        card += "\n## Evaluate figures\n\n" + evaluate_figures.strip() + "\n"
    (staging / "README.md").write_text(card, encoding="utf-8")
    return [CommitOperationAdd(path_in_repo=path.name, path_or_fileobj=str(path)) for path in sorted(staging.iterdir())]


def refuse_offline_push(repo_id: str) -> None:
    """Refuse a push under HF_HUB_OFFLINE before the files are built: it was built, listed as
    "uploading", and then failed with huggingface_hub's offline error and the advice to check
    HF_TOKEN."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise LmaeError(f"{repo_id}: push needs the Hub, and HF_HUB_OFFLINE is set: unset it to upload "
                        "(--dry-run builds the files without sending them)")


def push_family(operations: list, repo_id: str, private: bool, message: str) -> str:
    """Create the repository if needed and upload the operations in one commit; returns its URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.create_commit(repo_id, operations, commit_message=message, repo_type="model")
    except (HfHubHTTPError, OSError) as exc:
        raise LmaeError(f"{repo_id}: upload failed ({first_line(exc)}); is HF_TOKEN set with write access?") from None
    except Exception as exc:  # the HTTP client's own errors (no network, DNS): its classes vary by version
        if DEBUG["on"]:
            raise
        raise LmaeError(f"{repo_id}: upload failed ({type(exc).__name__}: {first_line(exc)}); "
                        "check the network and HF_TOKEN") from None
    return commit.commit_url
