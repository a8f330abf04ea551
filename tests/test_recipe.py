"""Recipes: one-line and TOML forms, their validation, and the canonical form stored with results."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from advisor.cli import main
from bench_engine.errors import InvalidConfigError
from bench_engine.pruning import LayerPolicy
from bench_engine.pruning.recipe import resolve_recipe
from db import Store

POLICY = LayerPolicy()


def test_one_line_recipe_with_parameters():
    config = resolve_recipe("erk(power=0.5)+sparsegpt(damping=0.02, blocksize=64)+bn_reestimation+bias_correction", 0.6, POLICY)
    assert config.allocation == "erk"
    assert config.erk_power == 0.5
    assert config.criterion == "sparsegpt"
    assert config.sparsegpt_damping == 0.02
    assert config.sparsegpt_blocksize == 64
    assert config.corrections == ("bias_correction", "bn_reestimation")
    assert config.sparsity == 0.6
    assert config.pattern is None


def test_pattern_term_fixes_sparsity():
    config = resolve_recipe("wanda+2:4", None, POLICY)
    assert config.pattern == (2, 4)
    assert config.sparsity == 0.5
    assert config.allocation == "uniform"


@pytest.mark.parametrize("recipe", [
    "uniform+magnitude+unstructured",
    "erk(power=0.25)+wanda+bias_correction+unstructured",
    "l2_global(max_layer_sparsity=0.9)+sparsegpt(blocksize=128, damping=0.01)+bn_reestimation+unstructured",
    "uniform+sparsegpt(blocksize=128, damping=0.01)+2:4",
])
def test_canonical_recipe_round_trips(recipe):
    config = resolve_recipe(recipe, 0.5, POLICY)
    assert resolve_recipe(config.recipe(), 0.5, POLICY) == config
    assert config.to_dict()["recipe"] == config.recipe()


@pytest.mark.parametrize("recipe, message", [
    ("", "recipe is empty"),
    ("uniform", "names no criterion"),
    ("wanda+magnitude", "more than one criterion"),
    ("wanda+obs", "unknown recipe term 'obs'"),
    ("erk(pow=0.5)+wanda", "has no parameter 'pow'; its parameters: power"),
    ("erk(power=high)+wanda", "power='high' is not a number"),
    ("sparsegpt(blocksize=1.5)", "is not an integer"),
    ("magnitude(damping=0.1)", "has no parameter 'damping'; its parameters: none"),
    ("block_recon(steps=2000)+wanda+layer_recon", "more than one reconstruction"),
    ("learned(steps=0)+wanda", "learned allocation steps must be at least 1"),
    ("learned(penalty=-1)+wanda", "penalty must be positive"),
    ("wanda+block_recon(batch=0)", "reconstruction batch must be at least 1"),
    ("wanda+block_recon(early_stop=2)", "early_stop must be in [0, 1)"),
    ("learned+wanda+2:4", "cannot be combined with pattern 2:4"),
    ("wanda+3:2", "invalid pattern"),
    ("erk(power=-1)+wanda", "erk_power must be positive"),
    ("wanda+(", "is invalid"),
])
def test_invalid_recipes_name_the_problem(recipe, message):
    with pytest.raises(InvalidConfigError, match=re.escape(message)):
        resolve_recipe(recipe, 0.5, POLICY)


def test_toml_recipe(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[recipe]\ncriterion = "sparsegpt"\nallocation = "erk"\nerk_power = 0.5\n'
                    'corrections = ["bias_correction"]\npattern = "unstructured"\n')
    config = resolve_recipe(str(path), 0.7, POLICY)
    assert config.recipe() == "erk(power=0.5)+sparsegpt(blocksize=128, damping=0.01)+bias_correction+unstructured"
    bad = tmp_path / "bad.toml"
    bad.write_text('[recipe]\ncriterion = "wanda"\ncolour = "red"\n')
    with pytest.raises(InvalidConfigError, match="unknown key 'colour'"):
        resolve_recipe(str(bad), 0.5, POLICY)
    broken = tmp_path / "broken.toml"
    broken.write_text("[recipe\n")
    with pytest.raises(InvalidConfigError, match="not valid TOML"):
        resolve_recipe(str(broken), 0.5, POLICY)
    with pytest.raises(InvalidConfigError, match="cannot read recipe file"):
        resolve_recipe(str(tmp_path / "missing.toml"), 0.5, POLICY)


def tiny_bench_inputs(tmp_path):
    """Write a random resnet10t weights file and 3 classes of 6 images; return (weights, db path)."""
    from test_inputs import save_tiny_resnet, write_images

    weights = tmp_path / "w.safetensors"
    save_tiny_resnet(weights)
    for index, name in enumerate(("a", "b", "c")):
        write_images(tmp_path / "data" / name, 6, seed=index)
    return weights, tmp_path / "r.duckdb"


def test_bench_with_recipes_stores_the_canonical_form(tmp_path):
    weights, db_path = tiny_bench_inputs(tmp_path)
    result = CliRunner().invoke(main, [
        "--db", str(db_path), "bench", "resnet10t", "--weights", str(weights), "--data", str(tmp_path / "data"),
        "--input-size", "32", "--calibration-size", "4", "--no-progress",
        "--recipe", "erk(power=0.5)+wanda+bn_reestimation", "--recipe", "magnitude+2:4",
        "--sparsity", "0.3", "--sparsity", "0.6",
    ])
    assert result.exit_code == 0, result.output
    with Store.open(db_path, read_only=True) as store:
        rows = store.query("SELECT recipe_json, requested_sparsity FROM results WHERE provenance = 'measured' AND criterion != 'dense' ORDER BY 1, 2")
    recipes = [(json.loads(r["recipe_json"])["recipe"], r["requested_sparsity"]) for r in rows]
    assert recipes == [
        ("erk(power=0.5)+wanda+bn_reestimation+unstructured", 0.3),
        ("erk(power=0.5)+wanda+bn_reestimation+unstructured", 0.6),
        ("uniform+magnitude+2:4", 0.5),
    ]


@pytest.mark.parametrize("extra, message", [
    (["--recipe", "erk(pow=1)+wanda"], "has no parameter 'pow'"),
    (["--activation-memory", "-1"], "--activation-memory"),
])
def test_bench_invalid_option_exits_2(tmp_path, extra, message):
    db_path = tmp_path / "r.duckdb"
    result = CliRunner().invoke(main, ["--db", str(db_path), "bench", "mnist/resnet10t", "--data", "mnist", *extra])
    assert result.exit_code == 2
    assert message in result.stderr
    assert not db_path.exists()


def test_owl_recipe_parameters():
    config = resolve_recipe("owl(band=0.1, threshold=7)+wanda", 0.5, POLICY)
    assert config.allocation == "owl"
    assert config.owl_band == 0.1
    assert config.owl_threshold == 7
    assert config.recipe() == "owl(band=0.1, threshold=7)+wanda+unstructured"
    with pytest.raises(InvalidConfigError, match="owl_band must be in"):
        resolve_recipe("owl(band=0.7)+wanda", 0.5, POLICY)


def test_bench_sensitivity_recipe(tmp_path, isolated_data_dir):
    weights, db_path = tiny_bench_inputs(tmp_path)
    args = ["--db", str(db_path), "bench", "resnet10t", "--weights", str(weights), "--data", str(tmp_path / "data"),
            "--input-size", "32", "--calibration-size", "4", "--no-progress", "--recipe", "sensitivity+magnitude",
            "--sparsity", "0.5"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert len(list((isolated_data_dir / "sensitivity").glob("*.json"))) == 1
    with Store.open(db_path, read_only=True) as store:
        row = store.query("SELECT achieved_sparsity_targeted, recipe_json FROM results WHERE provenance = 'measured' AND criterion = 'magnitude'")[0]
    assert row["achieved_sparsity_targeted"] == pytest.approx(0.5, abs=1e-4)
    assert json.loads(row["recipe_json"])["recipe"] == "sensitivity+magnitude+unstructured"


def test_layer_recon_recipe():
    config = resolve_recipe("magnitude+layer_recon(input=sparse, steps=50, lr=0.001)+bn_reestimation", 0.5, POLICY)
    assert config.reconstruction == "layer"
    assert config.recon_input == "sparse"
    assert config.recon_steps == 50
    assert config.recipe() == (
        "uniform+magnitude+layer_recon(input=sparse, steps=50, lr=0.001, batch=32, early_stop=0.001)"
        "+bn_reestimation+unstructured"
    )
    assert resolve_recipe(config.recipe(), 0.5, POLICY) == config
    with pytest.raises(InvalidConfigError, match="reconstruction input 'both' is invalid"):
        resolve_recipe("magnitude+layer_recon(input=both)", 0.5, POLICY)
    with pytest.raises(InvalidConfigError, match="'layer_recon' has no parameter 'epochs'"):
        resolve_recipe("magnitude+layer_recon(epochs=3)", 0.5, POLICY)


def test_full_recipe_resolves():
    recipe = "erk(power=0.5)+sparsegpt+bias_correction+block_recon(input=sparse, steps=2000)"
    config = resolve_recipe(recipe, 0.6, POLICY)
    assert (config.allocation, config.erk_power, config.criterion) == ("erk", 0.5, "sparsegpt")
    assert (config.reconstruction, config.recon_input, config.recon_steps) == ("block", "sparse", 2000)
    assert config.corrections == ("bias_correction",)
    assert resolve_recipe(config.recipe(), 0.6, POLICY) == config


def test_learned_and_weight_correction_recipe():
    config = resolve_recipe("bias_correction+weight_correction+learned(steps=20, lr=0.1, penalty=5)+wanda", 0.5, POLICY)
    assert config.allocation == "learned"
    assert (config.learned_steps, config.learned_lr, config.learned_penalty) == (20, 0.1, 5.0)
    # Corrections run in a fixed order: weights first, then the bias that depends on them.
    assert config.corrections == ("weight_correction", "bias_correction")
    assert config.recipe() == "learned(steps=20, lr=0.1, penalty=5)+wanda+weight_correction+bias_correction+unstructured"
    stored = config.to_dict()
    assert stored["learned_steps"] == 20
    assert "recon_steps" not in stored


def test_toml_recipe_with_block_reconstruction(tmp_path):
    path = tmp_path / "block.toml"
    path.write_text('[recipe]\ncriterion = "wanda"\nallocation = "learned"\nlearned_steps = 30\n'
                    'reconstruction = "block"\nrecon_input = "sparse"\nrecon_batch = 16\n'
                    'corrections = ["weight_correction"]\n')
    config = resolve_recipe(str(path), 0.5, POLICY)
    assert config.recipe() == (
        "learned(steps=30, lr=0.05, penalty=10)+wanda+block_recon(input=sparse, steps=200, lr=0.0001, batch=16, "
        "early_stop=0.001)+weight_correction+unstructured"
    )


def test_bench_recipe_grid(tmp_path):
    weights, db_path = tiny_bench_inputs(tmp_path)
    recipes = [
        "learned(steps=5)+magnitude",
        "wanda+weight_correction+block_recon(input=sparse, steps=5, batch=2)",
        "sparsegpt+layer_recon(input=dense, steps=5)",
    ]
    args = ["--db", str(db_path), "bench", "resnet10t", "--weights", str(weights), "--data", str(tmp_path / "data"),
            "--input-size", "32", "--calibration-size", "4", "--no-progress", "--sparsity", "0.4", "--sparsity", "0.6",
            "--activation-memory", "0"]
    for recipe in recipes:
        args += ["--recipe", recipe]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    with Store.open(db_path, read_only=True) as store:
        rows = store.query("SELECT requested_sparsity, achieved_sparsity_targeted, recipe_json FROM results "
                           "WHERE provenance = 'measured' AND criterion <> 'dense'")
    assert len(rows) == 6
    stored = {json.loads(r["recipe_json"])["recipe"] for r in rows}
    assert "learned(steps=5, lr=0.05, penalty=10)+magnitude+unstructured" in stored
    assert ("uniform+wanda+block_recon(input=sparse, steps=5, lr=0.0001, batch=2, early_stop=0.001)"
            "+weight_correction+unstructured") in stored
    for row in rows:
        assert row["achieved_sparsity_targeted"] == pytest.approx(row["requested_sparsity"], abs=1e-3)


@pytest.mark.parametrize("body, message", [
    ('criterion = "wanda"\nreconstruction = "block"\nrecon_steps = "abc"\n', "recon_steps = 'abc' is not an integer"),
    ('criterion = "wanda"\nallocation = "erk"\nerk_power = "high"\n', "erk_power = 'high' is not a number"),
    ('criterion = "wanda"\ncorrections = "bias_correction"\n', "corrections must be a list of names"),
    ('criterion = "wanda"\nrecon_steps = 30\n', "recon_steps is set but reconstruction is 'none'"),
    ('criterion = "wanda"\nallocation = "erk"\nlearned_steps = 30\n', "learned_steps is set but allocation is 'erk'"),
    ('criterion = "magnitude"\nsparsegpt_damping = 0.1\n', "sparsegpt_damping is set but criterion is 'magnitude'"),
])
def test_toml_recipe_errors(tmp_path, body, message):
    path = tmp_path / "bad.toml"
    path.write_text("[recipe]\n" + body)
    with pytest.raises(InvalidConfigError, match=re.escape(message)):
        resolve_recipe(str(path), 0.5, POLICY)


def test_recipe_line_rejects_repeats():
    with pytest.raises(InvalidConfigError, match="recipe term 'block_recon' sets steps twice; give it once"):
        resolve_recipe("magnitude+block_recon(steps=5, steps=6)", 0.5, POLICY)
    with pytest.raises(InvalidConfigError, match=r"more than one reconstruction \('layer_recon' and 'block_recon'\); keep one"):
        resolve_recipe("magnitude+layer_recon+block_recon", 0.5, POLICY)
