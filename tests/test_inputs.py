"""Bad inputs: weights files, datasets and pruning settings give clear errors naming the value."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from bench_engine.data import Preprocess, load_dataset, load_mnist
from bench_engine.errors import DataError, InvalidConfigError, UnknownModelError, WeightsError
from bench_engine.models import load_efficientnet_lite0, load_model
from bench_engine.pruning import PruneConfig
from bench_engine.weights import read_state_dict

RGB32 = Preprocess(input_size=32, in_chans=3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def save_tiny_resnet(path, num_classes=3):
    model = timm.create_model("resnet10t", pretrained=False, num_classes=num_classes)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    else:
        torch.save(model.state_dict(), path)
    return model


def write_images(folder, count, size=(20, 16), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(count):
        colour = tuple(rng.randrange(256) for _ in range(3))
        Image.new("RGB", size, colour).save(folder / f"img{i}.png")


# -- weights -----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_load_from_local_file(tmp_path, suffix):
    path = tmp_path / f"w{suffix}"
    reference = save_tiny_resnet(path)
    bundle = load_model("resnet10t", path)
    assert bundle.num_classes == 3  # read from the classifier shape in the file
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(bundle.model.state_dict()[name], tensor)
    assert bundle.weights_sha256
    assert len(bundle.weights_sha256) == 64


class Payload:
    """A class a weights-only unpickler must refuse to construct."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_unsafe_pickle_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with path.open("wb") as handle:
        pickle.dump({"weight": Payload()}, handle)
    with pytest.raises(WeightsError, match="rejected") as info:
        read_state_dict(path)
    assert str(path) in str(info.value)
    assert "this must never run" not in capsys.readouterr().out


def test_full_model_pickle_is_refused(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(timm.create_model("resnet10t", pretrained=False, num_classes=3), path)
    with pytest.raises(WeightsError, match="state_dict"):
        read_state_dict(path)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_weights_file(tmp_path, suffix):
    path = tmp_path / f"w{suffix}"
    save_tiny_resnet(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(WeightsError, match=str(path.name)):
        read_state_dict(path)


def test_missing_and_empty_weights(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        read_state_dict(tmp_path / "nope.pth")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match="empty"):
        read_state_dict(empty)


def test_same_file_name_different_weights_get_own_keys(tmp_path):
    first, second = tmp_path / "a" / "w.safetensors", tmp_path / "b" / "w.safetensors"
    first.parent.mkdir()
    second.parent.mkdir()
    save_tiny_resnet(first)
    save_tiny_resnet(second, num_classes=4)
    first_key = load_model("resnet10t", first).model_key
    second_key = load_model("resnet10t", second).model_key
    assert first_key != second_key
    assert first_key.startswith("resnet10t@w-")


def test_weights_for_another_architecture(tmp_path):
    path = tmp_path / "w.safetensors"
    save_tiny_resnet(path)
    with pytest.raises(WeightsError, match="do not fit the architecture"):
        load_model("convnext_atto", path)


def test_unknown_model_suggests_close_names(tmp_path):
    with pytest.raises(UnknownModelError, match="resnet10t"):
        load_model("resnet10", tmp_path / "w.pth")
    with pytest.raises(WeightsError, match="needs weights"):
        load_model("resnet18")


def test_named_efficientnet_lite0_has_real_imagenet_weights():
    from importlib import resources

    bundle = load_efficientnet_lite0()
    path = resources.files("skimage") / "data" / "coffee.png"
    image = Image.open(str(path)).convert("RGB")
    with torch.no_grad():
        logits = bundle.model(bundle.preprocess.transform()(image).unsqueeze(0))
    espresso = 967  # ImageNet-1k class index of 'espresso'
    assert int(logits.argmax()) == espresso


# -- data --------------------------------------------------------------------------------------


def test_labelled_class_folders_split_and_sample(tmp_path):
    for name in ("cat", "dog", "fox"):
        write_images(tmp_path / name, 10, seed=hash(name) % 100)
    data = load_dataset(str(tmp_path), RGB32, seed=1)
    assert data.labelled
    assert data.num_classes == 3
    assert data.class_names == ["cat", "dog", "fox"]
    assert len(data.train) == 24
    assert len(data.evaluation) == 6
    assert not set(map(str, data.train.images)) & set(map(str, data.evaluation.images))
    first = data.calibration(8, seed=3)
    again = data.calibration(8, seed=3)
    other = data.calibration(8, seed=4)
    assert first.shape == (8, 3, 32, 32)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    train_tensors = torch.stack([data.train[i][0] for i in range(len(data.train))])
    for sample in first:  # every calibration input comes from the training side
        assert bool((train_tensors == sample).flatten(1).all(1).any())


def test_train_val_layout_is_respected(tmp_path):
    for split, count in (("train", 6), ("val", 2)):
        for name in ("a", "b"):
            write_images(tmp_path / split / name, count)
    data = load_dataset(str(tmp_path), RGB32)
    assert len(data.train) == 12
    assert len(data.evaluation) == 4
    assert data.evaluation.labels == [0, 0, 1, 1]


def test_unlabelled_folder(tmp_path):
    write_images(tmp_path, 6)
    data = load_dataset(str(tmp_path), RGB32)
    assert not data.labelled
    assert data.num_classes is None
    assert len(data.train) == 3
    assert len(data.evaluation) == 3


def test_empty_and_missing_datasets(tmp_path):
    with pytest.raises(DataError, match="at least 2"):
        load_dataset(str(tmp_path), RGB32)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="0 images"):
        load_dataset(str(tmp_path), RGB32)
    with pytest.raises(DataError, match="not found"):
        load_dataset(str(tmp_path / "missing"), RGB32)


def test_corrupt_image_names_the_file(tmp_path):
    write_images(tmp_path, 3)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    data = load_dataset(str(tmp_path), RGB32)
    with pytest.raises(DataError, match="broken.png"):
        [data.train[i] for i in range(len(data.train))] + [data.evaluation[i] for i in range(len(data.evaluation))]


def test_calibration_size_larger_than_training_side(tmp_path):
    write_images(tmp_path, 4)
    data = load_dataset(str(tmp_path), RGB32)
    with pytest.raises(DataError, match="--calibration-size 2 or less"):
        data.calibration(10, seed=0)


def test_mnist_builtin_is_stratified():
    data = load_mnist(Preprocess(32, 1, (0.1307,), (0.3081,)))
    assert len(data.train) == 4000
    assert len(data.evaluation) == 1000
    assert np.bincount(data.evaluation.labels).tolist() == [100] * 10
    x, y = data.train[0]
    assert x.shape == (1, 32, 32)


# -- pruning settings --------------------------------------------------------------------------


@pytest.mark.parametrize("value, hint", [(1.5, "out of range"), (50, "is a percentage, use 0.5"), (0, "out of range"),
                                         (-0.1, "out of range"), (float("nan"), "out of range"), ("half", "invalid sparsity")])
def test_sparsity_out_of_range(value, hint):
    with pytest.raises(InvalidConfigError, match=hint):
        PruneConfig(criterion="magnitude", sparsity=value)


def test_unknown_criterion_and_allocation():
    with pytest.raises(InvalidConfigError, match="unknown criterion 'obs'"):
        PruneConfig(criterion="obs", sparsity=0.5)
    with pytest.raises(InvalidConfigError, match="unknown allocation 'random'"):
        PruneConfig(criterion="magnitude", sparsity=0.5, allocation="random")


def test_pattern_fixes_sparsity():
    with pytest.raises(InvalidConfigError, match="request 0.5"):
        PruneConfig(criterion="wanda", sparsity=0.7, pattern=(2, 4))
    with pytest.raises(InvalidConfigError, match="use allocation 'uniform'"):
        PruneConfig(criterion="wanda", sparsity=0.5, pattern=(2, 4), allocation="global_magnitude")


@pytest.mark.parametrize("model, data, message", [
    ("mnist/resnet10t", "digits", "dataset 'digits' is the detection set"),
    ("mnist/resnet10t", "nowhere", "built-in dataset: mnist, photos"),
    ("digits/fcos_mobilenet_v2", "mnist", "built-in dataset: digits, photos"),
])
def test_unknown_data_named_before_any_work(tmp_path, model, data, message):
    """A --data value that is neither a path nor a built-in of the task fails before a baseline trains."""
    from click.testing import CliRunner

    from advisor.cli import main

    result = CliRunner().invoke(main, ["--db", str(tmp_path / "r.duckdb"), "bench", model, "--data", data])
    assert result.exit_code == 2
    assert message in result.stderr
    assert not (tmp_path / "r.duckdb").exists()
    from bench_engine.paths import data_dir

    assert not list(data_dir().rglob("*.safetensors"))  # no baseline was trained
