"""The wheel carries every package and the run-time assets, so a non-editable install works."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import assets

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_packages_and_assets(tmp_path):
    source = tmp_path / "source"  # build from a copy, so the checkout gets no build/ folder
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("advisor", "bench_engine", "db", "assets"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("pts_advisor-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "assets/quickstart.json" in names
    for module in ("advisor/cli.py", "advisor/tui/app.py", "bench_engine/runner.py", "db/store.py"):
        assert module in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "ptsa = advisor.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_quickstart_asset_is_valid():
    settings = assets.read_json("quickstart.json")
    assert settings["criteria"] == ["magnitude", "wanda", "sparsegpt"]
    assert len(settings["sparsities"]) >= 3
    from bench_engine.suite import quickstart_jobs

    jobs = quickstart_jobs()
    assert len(jobs) == 15  # eleven MNIST baselines, EfficientNet-Lite0, then Lite1, Lite2 and MobileNetV2
    assert len({job.label for job in jobs}) == 15
    mnist, lite0, photos = jobs[:11], jobs[11], jobs[12:]
    assert all(len(job.plan.configs()) == 22 for job in mnist)  # 12 grid + 10 technique recipes
    assert len(lite0.plan.configs()) == 12
    assert [job.label for job in photos] == ["efficientnet_lite1", "efficientnet_lite2", "mobilenet_v2"]
    assert all(len(job.plan.configs()) == 4 and job.source.data == "photos" for job in photos)


def test_quickstart_covers_ten_techniques():
    from bench_engine.suite import quickstart_jobs

    configs = quickstart_jobs(include_lite0=False, models=["mnist/resnet10t"])[0].plan.configs()
    techniques = set()
    for config in configs:
        techniques.update({config.criterion, config.allocation, config.pattern_name, *config.corrections})
        if config.reconstruction != "none":
            techniques.add(f"{config.reconstruction}_recon")
    assert len(techniques - {"unstructured"}) >= 10
    assert {"learned", "sensitivity", "weight_correction", "block_recon", "layer_recon"} <= techniques
