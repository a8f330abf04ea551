"""Architecture features computed on the meta device: no weights, no download, many families."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from advisor.cli import main
from bench_engine.errors import InvalidConfigError
from bench_engine.features import featurize, weight_statistics
from db import Store

# 42 architectures from 40 timm modules: CNNs, mobile networks, transformers and hybrids.
ARCHITECTURES = [
    "resnet18", "resnet50", "resnet10t", "resnext26ts", "regnetx_006", "regnety_004", "mobilenetv2_100",
    "mobilenetv3_large_100", "mobilenetv3_small_050", "efficientnet_lite0", "efficientnet_b0", "mnasnet_100",
    "ghostnet_100", "lcnet_050", "convnext_atto", "convnextv2_atto", "vit_tiny_patch16_224",
    "vit_small_patch16_224", "deit_tiny_patch16_224", "swin_tiny_patch4_window7_224", "cait_xxs24_224",
    "levit_128", "efficientvit_b0", "efficientvit_m0", "coat_lite_tiny", "crossvit_tiny_240", "pit_ti_224",
    "mobilevit_xxs", "mobilevitv2_050", "edgenext_xx_small", "poolformer_s12", "repvgg_a0", "fastvit_t8",
    "densenet121", "dla34", "dpn48b", "hrnet_w18_small", "inception_v3", "tinynet_e", "mixer_s32_224",
    "resmlp_12_224", "tiny_vit_5m_224",
]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_architecture_featurises_without_weights(architecture):
    result = featurize(architecture)
    features = result["features"]
    assert result["timm_version"]
    assert result["family"]
    assert features["params"] > 1e5
    assert features["gmacs"] > 0
    assert features["prunable_layers"] >= 1
    kinds = ("linear", "dense_conv", "depthwise_conv", "grouped_conv")
    assert sum(features[f"{kind}_share"] for kind in kinds) == pytest.approx(1.0)
    assert features["width_min"] <= features["width_median"] <= features["width_max"]
    assert all(isinstance(value, float) for value in features.values())


def test_known_values_of_three_architectures():
    resnet = featurize("resnet18")["features"]
    assert resnet["params"] == 11_689_512
    assert resnet["gmacs"] == pytest.approx(1.814, abs=0.002)  # the usual 1.8 GMACs at 224×224
    assert resnet["residual_adds"] == 8  # eight BasicBlocks
    assert resnet["kernel_3x3_share"] > 0.9
    assert resnet["norm_batchnorm_share"] == 1.0
    assert resnet["act_relu_share"] == 1.0
    vit = featurize("vit_small_patch16_224")["features"]
    assert vit["attention_modules"] == 12
    assert vit["linear_share"] > 0.95
    assert vit["residual_adds"] == 24  # attention and MLP in each of 12 blocks
    assert vit["norm_layernorm_share"] == 1.0
    mobile = featurize("mobilenetv3_large_100")["features"]
    assert mobile["depthwise_conv_share"] > 0
    assert mobile["act_hardswish_share"] > 0
    assert featurize("lcnet_050")["features"]["residual_adds"] == 0


def test_input_size_and_classes_change_macs_and_params():
    small = featurize("resnet18", num_classes=10, input_size=32)
    assert small["input_size"] == 32
    assert small["num_classes"] == 10
    assert small["features"]["gmacs"] < featurize("resnet18")["features"]["gmacs"] / 40
    assert small["features"]["params"] < 11_689_512
    vit = featurize("vit_tiny_patch16_224", input_size=32)  # a transformer takes the size at build time
    assert vit["input_size"] == 32


def test_unknown_architecture_names_the_fix():
    with pytest.raises(InvalidConfigError, match=r"unknown timm architecture .resnet19.; did you mean resnet18"):
        featurize("resnet19")


def test_weight_statistics_of_gaussian_weights():
    torch.manual_seed(0)
    layer = torch.nn.Linear(512, 512)
    torch.nn.init.normal_(layer.weight)
    stats = weight_statistics(torch.nn.Sequential(layer))
    assert stats["weight_kurtosis"] == pytest.approx(0.0, abs=0.05)
    assert stats["weight_outlier_share"] == pytest.approx(0.0027, abs=0.0005)  # beyond 3 sigma
    assert stats["weight_magnitude_spread"] == pytest.approx(0.756, abs=0.01)  # sqrt(pi/2 - 1)
    heavy = torch.nn.Linear(512, 512)
    with torch.no_grad():
        heavy.weight.copy_(torch.distributions.StudentT(3.0).sample(heavy.weight.shape))
    assert weight_statistics(torch.nn.Sequential(heavy))["weight_kurtosis"] > 2


def test_features_command_stores_and_replaces(tmp_path):
    db_path = tmp_path / "f.duckdb"
    runner = CliRunner()
    result = runner.invoke(main, ["--db", str(db_path), "features", "resnet18", "lcnet_050"])
    assert result.exit_code == 0, result.output
    assert "resnet18" in result.stdout
    again = runner.invoke(main, ["--db", str(db_path), "features", "resnet18", "--json"])
    payload = json.loads(again.stdout)
    assert payload[0]["features"]["residual_adds"] == 8
    with Store.open(db_path, read_only=True) as store:
        rows = store.query("SELECT architecture, timm_version, params FROM architectures ORDER BY architecture")
    assert [r["architecture"] for r in rows] == ["lcnet_050", "resnet18"]  # replaced, not duplicated
    bad = runner.invoke(main, ["--db", str(tmp_path / "g.duckdb"), "features", "resnet19"])
    assert bad.exit_code == 2
    assert "unknown timm architecture 'resnet19'" in bad.stderr
    assert not (tmp_path / "g.duckdb").exists()
