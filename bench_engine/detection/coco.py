"""Read COCO-format detection datasets (instances JSON plus an image folder) and unlabelled folders.

The reader parses JSON with the `json` module and opens images with PIL. It never unpickles or
evaluates file contents. Every invalid input raises `DataError`, which names the bad value and
the fix.

Image folder: `load_coco(annotations)` resolves each image's `file_name` against the folder
`images/` beside the JSON file when that folder exists, and against the JSON file's own folder
otherwise. Pass `images=` to choose another folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from bench_engine.errors import DataError

if TYPE_CHECKING:
    from pycocotools.coco import COCO

log = logging.getLogger(__name__)

# The extensions bench_engine.data accepts; repeated here because that module imports torch.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
# A box may reach this many pixels beyond the image border before it counts as outside,
# because corners rounded to whole pixels can land just past the border.
BOX_TOLERANCE_PIXELS = 1.0
# Errors that name several files list at most this many.
LISTED_FILES = 5
REQUIRED_KEYS = ("images", "annotations", "categories")


@dataclass(frozen=True)
class CocoImage:
    """One image: its COCO id, file path, size in pixels, and `file_name` as the annotation file gives it."""

    id: int
    path: Path
    width: int
    height: int
    file_name: str


@dataclass(frozen=True)
class CocoBox:
    """One ground-truth box in pixels, as COCO stores it: top-left corner, width and height."""

    id: int
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]
    # COCO's crowd regions: detections that match them are neither true nor false positives.
    iscrowd: bool = False

    @property
    def area(self) -> float:
        return self.bbox[2] * self.bbox[3]


@dataclass
class CocoDataset:
    """A detection dataset: images, their ground-truth boxes and the category names.

    `boxes` maps every image id to its boxes (an empty list for an image without objects).
    `source` is the annotation file, or None for a folder read by `load_unlabelled_images`.
    """

    images: list[CocoImage]
    boxes: dict[int, list[CocoBox]]
    categories: dict[int, str]
    image_folder: Path
    source: Path | None = None
    labelled: bool = True
    _by_id: dict[int, CocoImage] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_id = {image.id: image for image in self.images}
        for image in self.images:
            self.boxes.setdefault(image.id, [])

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_ids(self) -> list[int]:
        return [image.id for image in self.images]

    @property
    def box_count(self) -> int:
        return sum(len(boxes) for boxes in self.boxes.values())

    def image(self, image_id: int) -> CocoImage:
        return self._by_id[image_id]

    def to_coco_dict(self) -> dict[str, Any]:
        """Return the dataset as a COCO instances document, with areas computed as width × height."""
        return {
            "images": [
                {"id": image.id, "file_name": image.file_name, "width": image.width, "height": image.height}
                for image in self.images
            ],
            "annotations": [
                {
                    "id": box.id,
                    "image_id": box.image_id,
                    "category_id": box.category_id,
                    "bbox": list(box.bbox),
                    "area": box.area,
                    "iscrowd": int(box.iscrowd),
                }
                for image in self.images
                for box in self.boxes[image.id]
            ],
            "categories": [{"id": key, "name": name} for key, name in sorted(self.categories.items())],
        }

    def to_coco(self) -> COCO:
        """Build the pycocotools ground-truth object in memory, without writing a file."""
        from pycocotools.coco import COCO

        ground_truth = COCO()
        ground_truth.dataset = self.to_coco_dict()
        # pycocotools prints progress to stdout, which the CLI keeps for machine-readable output.
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            ground_truth.createIndex()
        log.debug("pycocotools: %s", printed.getvalue().strip())
        return ground_truth


# -- public readers ----------------------------------------------------------------------------


def load_coco(annotations: str | Path, images: str | Path | None = None) -> CocoDataset:
    """Read a COCO instances JSON file and check it against its images.

    Each image file is opened to read its size and checked with PIL's `verify()`. That catches
    truncated or corrupt PNG files, but a truncated JPEG passes and fails only when decoded.
    Width and height may be left out of an image entry, and then the file's size is used.
    """
    path = Path(annotations)
    document = _read_document(path)
    folder = _image_folder(path, images)

    categories = _parse_categories(document["categories"], path)
    entries = _parse_image_entries(document["images"], path)
    _check_files_exist(entries, path, folder)
    coco_images = [_checked_image(entry, path, folder) for entry in entries]
    by_id = {image.id: image for image in coco_images}
    boxes = _parse_annotations(document["annotations"], path, by_id, categories)

    dataset = CocoDataset(coco_images, boxes, categories, folder, source=path)
    log.info(
        "read %d images, %d boxes and %d categories from %s",
        len(dataset), dataset.box_count, len(categories), path,
    )
    return dataset


def load_unlabelled_images(folder: str | Path) -> CocoDataset:
    """Read the images under `folder` (subfolders included) as a dataset without boxes.

    Image ids are 1, 2, ... in the order of the files' relative paths, so they are the same on
    every call for the same files. Such a dataset is scored by fidelity to the dense model.
    """
    root = Path(folder)
    if not root.exists():
        raise DataError("image folder not found: {path}. Pass a folder that contains images.", path=root)
    if not root.is_dir():
        raise DataError("image folder path is not a folder: {path}. Pass a folder that contains images.", path=root)

    files = sorted(
        (p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not files:
        raise DataError(
            "no images with extensions {extensions} under {path}; add images or pass another folder.",
            extensions=", ".join(IMAGE_EXTENSIONS),
            path=root,
        )

    coco_images = []
    for image_id, file in enumerate(files, start=1):
        width, height = _read_image_size(file)
        coco_images.append(CocoImage(image_id, file, width, height, file.relative_to(root).as_posix()))
    log.info("read %d unlabelled images from %s", len(coco_images), root)
    return CocoDataset(coco_images, {}, {}, root, source=None, labelled=False)


# -- the document ------------------------------------------------------------------------------


def _read_document(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise DataError(
            "annotation file not found: {path}. Pass the path of a COCO instances JSON file.", path=path
        )
    if path.is_dir():
        raise DataError(
            "annotation path {path} is a folder; pass the COCO instances JSON file inside it.", path=path
        )
    try:
        with path.open(encoding="utf-8") as stream:
            document = json.load(stream)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(
            "cannot parse {path} as JSON: {reason}. Pass a COCO instances JSON file.", path=path, reason=str(exc)
        ) from exc
    except OSError as exc:
        raise DataError("cannot read {path}: {reason}. Check the file's permissions.", path=path, reason=str(exc)) from exc

    if not isinstance(document, dict):
        raise DataError(
            "{path} contains a JSON {kind}, not an object; a COCO instances file is an object with "
            "the keys images, annotations and categories.",
            path=path,
            kind=type(document).__name__,
        )
    missing = [key for key in REQUIRED_KEYS if key not in document]
    if missing:
        raise DataError(
            "{path} is missing the top-level keys {keys}; a COCO instances file needs the keys images, "
            "annotations and categories (an empty list is allowed for annotations).",
            path=path,
            keys=", ".join(missing),
        )
    for key in REQUIRED_KEYS:
        if not isinstance(document[key], list):
            raise DataError(
                "the {key} value in {path} is a JSON {kind}; it must be a list.",
                key=key,
                path=path,
                kind=type(document[key]).__name__,
            )
    if not document["images"]:
        raise DataError("{path} lists no images; add at least one entry to its images list.", path=path)
    return document


def _image_folder(annotations: Path, images: str | Path | None) -> Path:
    if images is None:
        beside = annotations.parent / "images"
        return beside if beside.is_dir() else annotations.parent
    folder = Path(images)
    if not folder.is_dir():
        raise DataError(
            "image folder not found: {path}. Pass the folder that contains the files named in {annotations}.",
            path=folder,
            annotations=annotations,
        )
    return folder


def _is_integer(value: Any) -> bool:
    # JSON true and false arrive as Python bools, which are ints too.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _first_repeated(ids: Iterable[int]) -> tuple[int, int] | None:
    """Return the first id that occurs more than once, with its count, or None."""
    for key, count in Counter(ids).items():
        if count > 1:
            return key, count
    return None


# -- categories and images ---------------------------------------------------------------------


def _parse_categories(entries: list[Any], path: Path) -> dict[int, str]:
    categories: dict[int, str] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not _is_integer(entry.get("id")) or not isinstance(entry.get("name"), str):
            raise DataError(
                "category entry {index} in {path} is {entry!r}; each category needs an integer id and a "
                "name string.",
                index=index,
                path=path,
                entry=entry,
            )
    repeated = _first_repeated(entry["id"] for entry in entries)
    if repeated:
        raise DataError(
            "category id {id} appears {count} times in {path}; give each category its own id.",
            id=repeated[0],
            count=repeated[1],
            path=path,
        )
    for entry in entries:
        categories[entry["id"]] = entry["name"]
    return categories


@dataclass(frozen=True)
class _ImageEntry:
    id: int
    file_name: str
    width: int | None
    height: int | None


def _parse_image_entries(entries: list[Any], path: Path) -> list[_ImageEntry]:
    parsed = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not _is_integer(entry.get("id")):
            raise DataError(
                "image entry {index} in {path} has no integer id; each image needs an integer id and a "
                "file_name.",
                index=index,
                path=path,
            )
        file_name = entry.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            raise DataError(
                "image {image_id} in {path} has file_name {file_name!r}; give it the image's path "
                "relative to the image folder.",
                image_id=entry["id"],
                path=path,
                file_name=file_name,
            )
        width, height = entry.get("width"), entry.get("height")
        declared = width is not None or height is not None
        if declared and not (_is_integer(width) and _is_integer(height) and width > 0 and height > 0):
            raise DataError(
                "image {image_id} in {path} has width {width} and height {height}; both must be positive "
                "integers, or leave both out to read the size from the file.",
                image_id=entry["id"],
                path=path,
                width=width,
                height=height,
            )
        parsed.append(_ImageEntry(entry["id"], file_name, width, height))
    repeated = _first_repeated(entry.id for entry in parsed)
    if repeated:
        raise DataError(
            "image id {id} appears {count} times in {path}; give each image its own id.",
            id=repeated[0],
            count=repeated[1],
            path=path,
        )
    return parsed


def _check_files_exist(entries: list[_ImageEntry], path: Path, folder: Path) -> None:
    missing = [entry.file_name for entry in entries if not (folder / entry.file_name).is_file()]
    if missing:
        raise DataError(
            "images listed in {path} but missing from {folder}: {missing} of {total}, first {first}; "
            "copy the files there or pass the folder that contains them.",
            missing=len(missing),
            total=len(entries),
            path=path,
            folder=folder,
            first=", ".join(missing[:LISTED_FILES]),
        )


def _read_image_size(file: Path) -> tuple[int, int]:
    """Return (width, height) from the image header, after PIL's integrity check of the file."""
    # NOTE: sizes are the stored pixel sizes because an EXIF orientation tag is not applied.
    # Boxes on a rotated JPEG must be given in stored (unrotated) pixels.
    try:
        with Image.open(file) as image:
            size = image.size
            image.verify()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(
            "cannot read image {path}: {reason}. Remove or replace the file.", path=file, reason=str(exc)
        ) from exc
    return size


def _checked_image(entry: _ImageEntry, path: Path, folder: Path) -> CocoImage:
    file = folder / entry.file_name
    width, height = _read_image_size(file)
    if entry.width is not None and (entry.width, entry.height) != (width, height):
        raise DataError(
            "image {image_id} in {path} declares {declared_width}x{declared_height} pixels, but {file} is "
            "{width}x{height}; fix width and height in the annotation file.",
            image_id=entry.id,
            path=path,
            declared_width=entry.width,
            declared_height=entry.height,
            file=file,
            width=width,
            height=height,
        )
    return CocoImage(entry.id, file, width, height, entry.file_name)


# -- annotations -------------------------------------------------------------------------------


def _parse_annotations(
    entries: list[Any], path: Path, images: dict[int, CocoImage], categories: dict[int, str]
) -> dict[int, list[CocoBox]]:
    boxes: dict[int, list[CocoBox]] = {image_id: [] for image_id in images}
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not _is_integer(entry.get("id")):
            raise DataError(
                "annotation entry {index} in {path} has no integer id; each annotation needs an integer "
                "id, image_id, category_id and a bbox [x, y, width, height].",
                index=index,
                path=path,
            )
        box = _parse_box(entry, path, images, categories)
        boxes[box.image_id].append(box)
    repeated = _first_repeated(entry["id"] for entry in entries)
    if repeated:
        raise DataError(
            "annotation id {id} appears {count} times in {path}; give each annotation its own id.",
            id=repeated[0],
            count=repeated[1],
            path=path,
        )
    return boxes


def _parse_box(
    entry: Mapping[str, Any], path: Path, images: dict[int, CocoImage], categories: dict[int, str]
) -> CocoBox:
    ann_id = entry["id"]
    image_id = entry.get("image_id")
    if not _is_integer(image_id) or image_id not in images:
        raise DataError(
            "annotation {ann_id} in {path} names image id {image_id}, which is not in its images list; "
            "add the image or fix the annotation.",
            ann_id=ann_id,
            path=path,
            image_id=image_id,
        )
    category = entry.get("category_id")
    if not _is_integer(category) or category not in categories:
        raise DataError(
            "annotation {ann_id} in {path} names category {category}, which is not in its categories "
            "list; add it to categories or fix the annotation.",
            ann_id=ann_id,
            path=path,
            category=category,
        )

    bbox = entry.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise DataError(
            "annotation {ann_id} in {path} has bbox {bbox}; a bbox is a list of four finite numbers "
            "[x, y, width, height] in pixels.",
            ann_id=ann_id,
            path=path,
            bbox=bbox,
        )
    x, y, width, height = (float(v) for v in bbox)
    if width <= 0 or height <= 0:
        raise DataError(
            "annotation {ann_id} in {path} has bbox {bbox}, whose width or height is not positive; "
            "fix or remove the annotation.",
            ann_id=ann_id,
            path=path,
            bbox=bbox,
        )
    image = images[image_id]
    tolerance = BOX_TOLERANCE_PIXELS
    if x < -tolerance or y < -tolerance or x + width > image.width + tolerance or y + height > image.height + tolerance:
        raise DataError(
            "annotation {ann_id} on image {image_id} in {path} has bbox {bbox}, which extends more than "
            "1 pixel outside the {width}x{height} image; fix the box or the image size.",
            ann_id=ann_id,
            image_id=image_id,
            path=path,
            bbox=bbox,
            width=image.width,
            height=image.height,
        )
    crowd = entry.get("iscrowd", 0)
    if crowd not in (0, 1):
        raise DataError(
            "annotation {ann_id} in {path} has iscrowd {iscrowd}; it must be 0 or 1.",
            ann_id=ann_id,
            path=path,
            iscrowd=crowd,
        )
    return CocoBox(ann_id, image_id, category, (x, y, width, height), iscrowd=bool(crowd))
