"""Box metrics with pycocotools: mAP against labelled boxes, and fidelity to the dense model.

Both functions return the same keys:

- `map`: COCO mAP@[.5:.95], the mean over IoU thresholds 0.50, 0.55, ..., 0.95 and over the
  categories that have ground-truth boxes, of AP with COCO's 101-point interpolated precision.
  On a 0..1 scale.
- `map_50`, `map_75`: the same at IoU 0.50 and 0.75 only.
- `mar_100`: COCO's mean recall with at most 100 detections per image, averaged the same way.
- `images`, `detections`, `ground_truth_boxes`: what was scored.
- `invalid_detections`: detections dropped because a coordinate or the score is not finite, or
  the width or height is negative, as a heavily pruned model may output.

COCO counts at most 100 detections per image, the highest-scoring ones. Detections of a category
with no ground-truth box change no AP, as in the COCO definition.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from bench_engine.detection.coco import CocoBox, CocoDataset, CocoImage
from bench_engine.errors import DataError

log = logging.getLogger(__name__)

# Dense-model boxes with a score at or above this become the ground truth in fidelity mode.
# The value is a common convention and was not tuned; callers pass `score_threshold` to change it.
DEFAULT_SCORE_THRESHOLD = 0.5
DETECTION_KEYS = ("image_id", "category_id", "bbox", "score")
# Indices into COCOeval.stats: AP@[.5:.95], AP@.5, AP@.75, and AR with 100 detections per image.
STATS_INDEX = {"map": 0, "map_50": 1, "map_75": 2, "mar_100": 8}


def evaluate_boxes(dataset: CocoDataset, detections: Sequence[Mapping[str, Any]]) -> dict[str, float | int]:
    """Score detections against the dataset's boxes with the COCO bbox metrics.

    `detections` are dicts `{image_id, category_id, bbox: [x, y, width, height], score}` in
    pixels. Raises DataError when the dataset has no box (mAP is undefined then) or a detection
    is malformed or names an image that is not in the dataset.
    """
    if not any(not box.iscrowd for boxes in dataset.boxes.values() for box in boxes):
        raise DataError(
            "the dataset {dataset} has no ground-truth boxes (crowd regions do not count), so mAP is "
            "undefined; score it by fidelity to the dense model instead.",
            dataset=dataset.source or dataset.image_folder,
        )
    return _score(dataset, detections, "detections")


def fidelity_boxes(
    reference: Sequence[Mapping[str, Any]],
    candidate: Sequence[Mapping[str, Any]],
    images: CocoDataset | Sequence[CocoImage],
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
) -> dict[str, float | int]:
    """Score the sparse model's boxes (`candidate`) against the dense model's (`reference`).

    The reference boxes with a score at or above `score_threshold` become the ground truth, and
    all candidate boxes are scored with their own scores, so a sparse model that outputs the
    dense model's boxes and scores gets 1.0. Category names come from `images` when it is a
    dataset that has them. The result also contains `score_threshold`. Raises DataError when no
    reference box reaches the threshold.
    """
    image_list = list(images.images if isinstance(images, CocoDataset) else images)
    names = images.categories if isinstance(images, CocoDataset) else {}
    image_ids = {image.id for image in image_list}
    _validate(reference, image_ids, "reference")
    _validate(candidate, image_ids, "candidate")
    finite_reference, _ = _finite(reference)
    # A zero-sized reference box can match nothing, so it is not ground truth.
    confident = [
        detection
        for detection in finite_reference
        if detection["score"] >= score_threshold and detection["bbox"][2] > 0 and detection["bbox"][3] > 0
    ]
    if not confident:
        raise DataError(
            "none of the dense model's {count} boxes on {images} images has a score of at least "
            "{threshold}, so there is no reference to score against; pass a lower --reference-score, or use "
            "images with objects the dense model detects.",
            count=len(reference),
            images=len(image_list),
            threshold=score_threshold,
        )

    category_ids = {int(d["category_id"]) for d in confident} | {
        int(d["category_id"]) for d in candidate
    }
    categories = {key: names.get(key, str(key)) for key in sorted(category_ids)}
    boxes: dict[int, list[CocoBox]] = {image.id: [] for image in image_list}
    for box_id, detection in enumerate(confident, start=1):
        bbox = tuple(float(v) for v in detection["bbox"])
        boxes[int(detection["image_id"])].append(
            CocoBox(box_id, int(detection["image_id"]), int(detection["category_id"]), bbox)
        )
    folder = images.image_folder if isinstance(images, CocoDataset) else image_list[0].path.parent
    ground_truth = CocoDataset(image_list, boxes, categories, folder, labelled=False)
    return {**_score(ground_truth, candidate, "candidate"), "score_threshold": score_threshold}


# -- shared scoring ----------------------------------------------------------------------------


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate(detections: Sequence[Mapping[str, Any]], image_ids: set[int], argument: str) -> None:
    """Raise DataError on a detection that lacks a key, has a malformed value, or an unknown image.

    `argument` is the name of the caller's parameter that contains the list, for the message.
    """
    for index, detection in enumerate(detections):
        missing = [key for key in DETECTION_KEYS if not isinstance(detection, Mapping) or key not in detection]
        if missing:
            raise DataError(
                "detection {index} of {argument} has no {keys}; each detection needs image_id, category_id, "
                "bbox [x, y, width, height] and score.",
                argument=argument,
                index=index,
                keys=", ".join(missing),
            )
        bbox = detection["bbox"]
        numbers = isinstance(bbox, Sequence) and len(bbox) == 4 and all(_is_number(v) for v in bbox)
        if not numbers or not _is_number(detection["score"]) or not _is_id(detection["category_id"]):
            raise DataError(
                "detection {index} of {argument} has bbox {bbox}, score {score} and category_id {category}; bbox "
                "must be four numbers [x, y, width, height], score a number and category_id an integer.",
                argument=argument,
                index=index,
                bbox=bbox,
                score=detection["score"],
                category=detection["category_id"],
            )
        if not _is_id(detection["image_id"]) or detection["image_id"] not in image_ids:
            raise DataError(
                "detection {index} of {argument} names image id {image_id}, which is not among the {count} "
                "evaluated images; detections must use the dataset's image ids.",
                argument=argument,
                index=index,
                image_id=detection["image_id"],
                count=len(image_ids),
            )


def _is_number(value: Any) -> bool:
    # NaN and infinity pass here because a pruned model may output them, and `_finite` drops them.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(detections: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Return copies of the detections with finite values and non-negative sizes, and the dropped count."""
    finite = []
    for detection in detections:
        values = [*detection["bbox"], detection["score"]]
        x, y, width, height = detection["bbox"]
        if all(math.isfinite(v) for v in values) and width >= 0 and height >= 0:
            finite.append(
                {
                    "image_id": int(detection["image_id"]),
                    "category_id": int(detection["category_id"]),
                    "bbox": [float(x), float(y), float(width), float(height)],
                    "score": float(detection["score"]),
                }
            )
    return finite, len(detections) - len(finite)


def _score(
    ground_truth: CocoDataset, detections: Sequence[Mapping[str, Any]], argument: str
) -> dict[str, float | int]:
    _validate(detections, set(ground_truth.image_ids), argument)
    finite, invalid = _finite(detections)
    if invalid:
        log.warning("dropped %d of %d detections with a non-finite value or a negative size", invalid, len(detections))
    outside = sum(1 for detection in finite if detection["category_id"] not in ground_truth.categories)
    if outside:
        log.info("%d detections name categories without ground-truth boxes; they change no AP", outside)

    counts = {
        "images": len(ground_truth),
        "detections": len(detections),
        "ground_truth_boxes": ground_truth.box_count,
        "invalid_detections": invalid,
    }
    if not finite:
        # With ground-truth boxes and no detection, every precision and recall is 0. The metrics
        # are set here because pycocotools 2.0.11's loadRes raises IndexError on an empty list.
        return {**{key: 0.0 for key in STATS_INDEX}, **counts}
    return {**_coco_stats(ground_truth, finite), **counts}


def _coco_stats(ground_truth: CocoDataset, detections: list[dict[str, Any]]) -> dict[str, float]:
    from pycocotools.cocoeval import COCOeval

    coco_truth = ground_truth.to_coco()
    # pycocotools prints progress and the summary table to stdout, which the CLI keeps for
    # machine-readable output, so it is captured and logged at debug level.
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        coco_detections = coco_truth.loadRes(detections)
        evaluation = COCOeval(coco_truth, coco_detections, iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    log.debug("pycocotools: %s", printed.getvalue().strip())
    # COCOeval reports -1 where no category has ground truth, which `_score`'s callers rule out.
    return {key: float(evaluation.stats[index]) for key, index in STATS_INDEX.items()}
