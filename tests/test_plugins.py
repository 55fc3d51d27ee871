"""Third-party plugins through real entry points: a throwaway distribution installed with pip."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

GOOD = '''
"""A throwaway third-party algorithm for the plugin tests."""
import torch
from robustbench_mtl.algorithms.base import Algorithm


class SquaredERM(Algorithm):
    """Squared-loss ERM: the mean of squared per-example cross-entropies (a test plugin)."""

    def aggregate(self, losses, batch):
        return (losses ** 2).mean()
'''
BROKEN = '''
"""A plugin whose import fails."""
raise ImportError("this plugin is broken on purpose")
'''


def _make_dist(root: Path, name: str, module: str, source: str, entry_points: dict[str, dict[str, str]]) -> Path:
    src = root / name
    (src / module).mkdir(parents=True)
    (src / module / "__init__.py").write_text(textwrap.dedent(source))
    eps = "".join(f'\n[project.entry-points."{group}"]\n' + "".join(f'{k} = "{v}"\n' for k, v in items.items())
                  for group, items in entry_points.items())
    (src / "pyproject.toml").write_text(textwrap.dedent(f'''
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "{name}"
        version = "1.2.3"
        ''') + eps)
    return src


def _install(src: Path, site: Path) -> None:
    # --target keeps the test's venv clean; no build isolation, so nothing is downloaded.
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(src)], check=True, capture_output=True)


def _cli(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-m", "robustbench_mtl", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dists")
    site = root / "site"
    _install(_make_dist(root, "rbm-test-good", "rbm_test_good", GOOD,
                        {"robustbench_mtl.algorithms": {"squared_erm": "rbm_test_good:SquaredERM"}}), site)
    _install(_make_dist(root, "rbm-test-broken", "rbm_test_broken", BROKEN,
                        {"robustbench_mtl.algorithms": {"broken_algo": "rbm_test_broken:Nothing"}}), site)
    _install(_make_dist(root, "rbm-test-clash", "rbm_test_clash", GOOD,
                        {"robustbench_mtl.algorithms": {"erm": "rbm_test_clash:SquaredERM"}}), site)
    return site


@pytest.mark.slow
def test_plugin_algorithm_is_listed_and_runnable(site: Path, tmp_path: Path) -> None:
    listed = _cli(site, "list", "algorithms", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)["algorithms"]}
    assert rows["squared_erm"]["provider"] == "rbm-test-good 1.2.3"
    assert rows["squared_erm"]["summary"].startswith("Squared-loss ERM")
    res = _cli(site, "run", "--algo", "squared_erm", "--data", "synthetic", "--set", "train.epochs=2",
               "--out", "r", "--quiet", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["components"]["algorithm"] == {"name": "squared_erm", "dist": "rbm-test-good",
                                                 "version": "1.2.3"}
    assert (tmp_path / "r" / "final.json").exists()


@pytest.mark.slow
def test_broken_plugin_is_reported_and_breaks_nothing(site: Path, tmp_path: Path) -> None:
    listed = _cli(site, "list", "algorithms", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "mt_l1" in listed.stdout and "broken_algo" in listed.stdout and "failed" in listed.stdout
    rows = {r["name"]: r for r in json.loads(_cli(site, "list", "algorithms", "--json", cwd=tmp_path).stdout)[
        "algorithms"]}
    assert "mt_l1" in rows and "broken on purpose" in rows["broken_algo"]["error"]
    assert rows["broken_algo"]["provider"] == "rbm-test-broken"
    report = _cli(site, "plugins", "--json", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    by_dist = {d["dist"]: d for d in json.loads(report.stdout)}
    errors = by_dist["rbm-test-broken"]["errors"]
    assert errors and "broken on purpose" in errors[0]["error"] and errors[0]["name"] == "broken_algo"
    used = _cli(site, "run", "--algo", "broken_algo", "--data", "synthetic", "--out", "b", cwd=tmp_path)
    assert used.returncode != 0 and "rbm-test-broken" in used.stderr and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_name_clash_is_refused_naming_both(site: Path, tmp_path: Path) -> None:
    report = _cli(site, "plugins", "--json", cwd=tmp_path)
    errors = {d["dist"]: d["errors"] for d in json.loads(report.stdout)}["rbm-test-clash"]
    assert any("'robustbench-mtl' and 'rbm-test-clash'" in e["error"] for e in errors)
    # core keeps its name: erm still runs core's ERM
    res = _cli(site, "run", "--algo", "erm", "--data", "synthetic", "--set", "train.epochs=1", "--out", "e",
               "--quiet", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "e" / "config.json").read_text())["components"]["algorithm"]["dist"] == \
        "robustbench-mtl"
