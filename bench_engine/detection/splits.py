"""Detection datasets split into a calibration side and an evaluation side, as model-ready tensors.

Every image is letterboxed to `input_size` × `input_size`: scaled so its longer side is
`input_size` pixels (aspect ratio kept) and padded with black at the right and bottom. The
image's top-left corner stays at (0, 0), so a box predicted on the letterboxed image maps back
to original pixels by dividing x by `scale_x` and y by `scale_y` (`letterbox_scale`). The two
scales differ only by rounding of the resized side.

Pixels are RGB floats in [0, 1] without normalisation, because torchvision detectors normalise
inside the model. Greyscale and palette images are converted to RGB.

Specs for `load_detection_data`:

- `digits`: the built-in set of MNIST digits on 128×128 canvases, built on first use under the
  data folder. train.json is the calibration side and eval.json the evaluation side.
- `photos`: the photos bundled with scikit-image and scikit-learn, unlabelled, split by a seeded
  shuffle into halves (the calibration side gets the extra photo of an odd count).
- a COCO instances JSON file: labelled. A seeded 20 % of its images (at least 1) are the
  evaluation side and the rest the calibration side, so it needs at least 2 images.
- a folder of images: unlabelled, split like a COCO file.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from bench_engine.data import DEFAULT_CACHE_BYTES, bundled_photo_paths, check_calibration_size
from bench_engine.detection.coco import CocoDataset, CocoImage, load_coco, load_unlabelled_images
from bench_engine.detection.digits import EVAL_ANNOTATIONS, TRAIN_ANNOTATIONS, build_digits_detection
from bench_engine.errors import DataError, InvalidConfigError
from bench_engine.paths import data_dir
from bench_engine.task_names import DETECTION

log = logging.getLogger(__name__)

BUILTIN_DETECTION_DATASETS = ("digits", "photos")
# 1,200 training and 300 evaluation canvases; the named digits detector is trained on the former.
DIGITS_IMAGES = 1500
DIGITS_SEED = 0
# Share of a COCO file's or folder's images that become the evaluation side.
EVAL_FRACTION = 0.2


def digits_folder() -> Path:
    return data_dir() / "detection" / "digits"


def letterbox_scale(width: int, height: int, size: int) -> tuple[float, float]:
    """Return (scale_x, scale_y) from original pixels to the letterboxed `size` × `size` image."""
    resized_width, resized_height = _letterbox_size(width, height, size)
    return resized_width / width, resized_height / height


def _letterbox_size(width: int, height: int, size: int) -> tuple[int, int]:
    scale = size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def letterbox(image: Image.Image, size: int) -> torch.Tensor:
    """Convert an image to a [3, size, size] float tensor in [0, 1], letterboxed as the module describes."""
    rgb = image.convert("RGB")
    resized_size = _letterbox_size(rgb.width, rgb.height, size)
    if resized_size != rgb.size:
        rgb = rgb.resize(resized_size, Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1)
    canvas = torch.zeros(3, size, size)
    canvas[:, : rgb.height, : rgb.width] = pixels.float() / 255.0
    return canvas


def read_image(image: CocoImage) -> Image.Image:
    """Decode an image file; EXIF orientation is not applied, because COCO boxes use stored pixels."""
    try:
        with Image.open(image.path) as opened:
            opened.load()
            return opened.copy()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise DataError(
            "cannot read image {path}: {reason}. Remove or replace the file.", path=image.path, reason=str(exc)
        ) from exc


@dataclass
class DetectionSplits:
    """A detection dataset split into a calibration side (`train`) and an evaluation side.

    `categories` maps COCO category ids to names and is empty when the set is unlabelled.
    """

    name: str
    labelled: bool
    train: CocoDataset
    evaluation: CocoDataset
    categories: dict[int, str]
    input_size: int
    cache_bytes: int = DEFAULT_CACHE_BYTES
    # Letterboxed inputs by image id, kept while they fit in `cache_bytes`, because every
    # configuration of a bench runs the same images again.
    _cache: dict[int, torch.Tensor] = field(default_factory=dict, init=False, repr=False)
    _cache_used: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.input_size < 1:
            raise InvalidConfigError(
                "the detection input size must be at least 1 pixel, got {input_size}; pass a positive --input-size.",
                input_size=self.input_size,
            )

    task = DETECTION  # a class attribute, not a field: what `bench_engine.tasks.evaluation_for` reads

    @property
    def num_classes(self) -> int | None:
        """The foreground category count of a labelled set; None when unlabelled."""
        return len(self.categories) if self.labelled else None

    def scale(self, image: CocoImage) -> tuple[float, float]:
        """Return (scale_x, scale_y) from the image's original pixels to the model input."""
        return letterbox_scale(image.width, image.height, self.input_size)

    def image_tensor(self, image: CocoImage) -> torch.Tensor:
        """Return the letterboxed [3, S, S] input of one image, decoding it unless it is cached."""
        cached = self._cache.get(image.id)
        if cached is not None:
            return cached
        tensor = letterbox(read_image(image), self.input_size)
        size = tensor.numel() * tensor.element_size()
        if self._cache_used + size <= self.cache_bytes:
            self._cache[image.id] = tensor
            self._cache_used += size
        return tensor

    def check_calibration_size(self, size: int) -> None:
        check_calibration_size(size, len(self.train), self.name)

    def calibration_images(self, size: int, seed: int) -> list[CocoImage]:
        """Draw `size` training-side images without replacement, the same ones for a given seed."""
        self.check_calibration_size(size)
        return random.Random(seed).sample(self.train.images, size)

    def calibration(self, size: int, seed: int) -> torch.Tensor:
        """Return the calibration draw as a [size, 3, S, S] batch."""
        return torch.stack([self.image_tensor(image) for image in self.calibration_images(size, seed)])

    def evaluation_images(self, batch_size: int) -> Iterator[tuple[list[int], torch.Tensor]]:
        """Yield (image ids, [B, 3, S, S] batch) over the evaluation side, in its image order."""
        if batch_size < 1:
            raise InvalidConfigError("batch size must be at least 1, got {batch_size}.", batch_size=batch_size)
        images = self.evaluation.images
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            yield [image.id for image in chunk], torch.stack([self.image_tensor(image) for image in chunk])

    def check_readable(self, calibration_size: int, seed: int) -> None:
        """Decode the calibration draw and every evaluation image, raising DataError on a bad file.

        Run before a bench starts, so a broken image fails the command before anything is stored.
        Training-side images outside the draw are not decoded.
        """
        self.calibration(calibration_size, seed)
        for image in self.evaluation.images:
            self.image_tensor(image)


# -- loaders -----------------------------------------------------------------------------------


def load_detection_data(spec: str, input_size: int, seed: int = 0) -> DetectionSplits:
    """Load a detection dataset by spec: `digits`, `photos`, a COCO instances JSON file or an image folder.

    `seed` chooses the split of a photos set, COCO file or folder. The digits set has fixed splits.
    """
    if spec == "digits":
        return load_digits(input_size)
    if spec == "photos":
        return _load_photos(input_size, seed)
    path = Path(spec)
    if path.suffix.lower() == ".json" or path.is_file():
        dataset = load_coco(path)
        train, evaluation = split_dataset(dataset, seed)
        return DetectionSplits(str(path), True, train, evaluation, dict(dataset.categories), input_size)
    if path.is_dir():
        dataset = load_unlabelled_images(path)
        train, evaluation = split_dataset(dataset, seed)
        return DetectionSplits(str(path), False, train, evaluation, {}, input_size)
    raise DataError(
        "unknown detection dataset {spec!r}: it is neither a built-in set ({choices}), a COCO instances "
        "JSON file, nor a folder of images. Pass one of these.",
        spec=spec,
        choices=", ".join(BUILTIN_DETECTION_DATASETS),
    )


def load_digits(input_size: int) -> DetectionSplits:
    """Load the built-in digits set, building it under the data folder on first use."""
    folder = build_digits_detection(digits_folder(), n_images=DIGITS_IMAGES, seed=DIGITS_SEED)
    train = load_coco(folder / TRAIN_ANNOTATIONS)
    evaluation = load_coco(folder / EVAL_ANNOTATIONS)
    return DetectionSplits("digits", True, train, evaluation, dict(evaluation.categories), input_size)


def _load_photos(input_size: int, seed: int) -> DetectionSplits:
    paths = bundled_photo_paths()
    if len(paths) < 2:
        raise DataError(
            "the built-in dataset 'photos' needs scikit-image and scikit-learn installed; "
            "found fewer than 2 of their bundled photos."
        )
    images = []
    for image_id, path in enumerate(paths, start=1):
        try:
            with Image.open(path) as opened:
                width, height = opened.size
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(
                "cannot read image {path}: {reason}. Remove or replace the file.", path=path, reason=str(exc)
            ) from exc
        images.append(CocoImage(image_id, path, width, height, path.name))
    order = list(range(len(images)))
    random.Random(seed).shuffle(order)
    n_train = (len(images) + 1) // 2
    train = _subset(images, sorted(order[:n_train]), None)
    evaluation = _subset(images, sorted(order[n_train:]), None)
    return DetectionSplits("photos", False, train, evaluation, {}, input_size)


def split_dataset(dataset: CocoDataset, seed: int) -> tuple[CocoDataset, CocoDataset]:
    """Split a dataset's images by a seeded shuffle into (calibration side, evaluation side).

    The evaluation side gets EVAL_FRACTION of the images, rounded, and at least 1; the
    calibration side keeps at least 1. Boxes and categories follow their images.
    """
    if len(dataset) < 2:
        raise DataError(
            "the detection dataset {path} has too few images ({count}); a calibration side and an "
            "evaluation side need at least 2 images, so add images.",
            path=dataset.source or dataset.image_folder,
            count=len(dataset),
        )
    order = list(range(len(dataset)))
    random.Random(seed).shuffle(order)
    n_eval = min(max(1, round(len(dataset) * EVAL_FRACTION)), len(dataset) - 1)
    evaluation = _subset(dataset.images, sorted(order[:n_eval]), dataset)
    train = _subset(dataset.images, sorted(order[n_eval:]), dataset)
    return train, evaluation


def _subset(images: Sequence[CocoImage], indices: Sequence[int], parent: CocoDataset | None) -> CocoDataset:
    chosen = [images[i] for i in indices]
    if parent is None:
        return CocoDataset(chosen, {}, {}, chosen[0].path.parent, source=None, labelled=False)
    boxes = {image.id: list(parent.boxes[image.id]) for image in chosen}
    return CocoDataset(
        chosen, boxes, dict(parent.categories), parent.image_folder, source=parent.source, labelled=parent.labelled
    )
