"""Plots: avg vs worst-group, the w_reg / w_ssl sweeps and one run's curves are written as PNG and SVG."""
from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from robustbench_mtl.cli import main
from robustbench_mtl.leaderboard.plots import make_plots
from test_leaderboard_formats import fake_run

PNG = b"\x89PNG\r\n\x1a\n"


def _sweep_runs(root: Path) -> Path:
    """mt_l1 + simclr over three l1.weight values (2 seeds each) at one simclr.weight, plus erm."""
    for w in (0.3679, 1.0, 2.7183):
        for s in range(2):
            fake_run(root, f"mt-{w}-{s}", s, 0.5 + w / 10, avg=0.9, algorithm="mt_l1", aux=("simclr",),
                     hparams={"l1": {"weight": w}, "simclr": {"weight": 1.0}})
    run = fake_run(root, "erm-0", 0, 0.4)
    records = [{"epoch": e, "step": 10 * e, "train/loss": 1 / (e + 1), "val/worst_group_acc": 0.1 * e,
                "val/avg_acc": 0.5 + 0.05 * e, "test/worst_group_acc": 0.1 * e, "test/avg_acc": 0.5 + 0.04 * e}
               for e in range(4)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def _images_ok(paths: list[Path]) -> None:
    for path in paths:
        data = path.read_bytes()
        assert path.stat().st_size > 1000, path
        assert data.startswith(PNG) if path.suffix == ".png" else b"<svg" in data[:2000], path


def test_plots_write_png_and_svg(tmp_path: Path) -> None:
    run = _sweep_runs(tmp_path / "runs")
    paths, notes = make_plots(tmp_path / "runs", tmp_path / "plots", run_dir=run, reported=True)
    assert sorted(p.name for p in paths) == sorted(f"{stem}.{ext}" for ext in ("png", "svg") for stem in (
        "synthetic-avg-vs-worst", "synthetic-mt_l1+simclr-mlp-w_reg", "run-erm-0"))
    _images_ok(paths)
    # The aux weight was not swept: one line saying so, not an empty plot.
    assert notes == ["synthetic, mt_l1 + simclr (mlp): w_ssl (simclr.weight) has the single value 1.0; "
                     "no sweep to plot"]


def test_plot_cli(tmp_path: Path) -> None:
    run = _sweep_runs(tmp_path / "runs")
    res = CliRunner().invoke(main, ["plot", "--run", str(run), "--out", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["run-erm-0.png", "run-erm-0.svg"]
    res = CliRunner().invoke(main, ["plot", str(tmp_path / "runs"), "--out", str(tmp_path / "q"),
                                    "--protocol", "No-GP"])
    assert res.exit_code == 0 and res.stderr.startswith("note: synthetic, mt_l1 + simclr (mlp): w_ssl")
    _images_ok(list((tmp_path / "q").iterdir()))


def test_plot_bad_inputs_are_one_line(tmp_path: Path) -> None:
    _sweep_runs(tmp_path / "runs")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [([], "error: plot needs RUNS_DIR"),
             (["--run", str(empty)], f"error: {empty} has no epoch records in metrics.jsonl"),
             ([str(tmp_path / "runs"), "--protocol", "best"], "error: no finished runs have protocol 'best'")]
    for args, start in cases:
        res = CliRunner().invoke(main, ["plot", *args, "--out", str(tmp_path / "out")])
        assert res.exit_code == 2 and len(res.stderr.splitlines()) == 1, res.output
        assert res.stderr.startswith(start), res.stderr
    assert not (tmp_path / "out").exists()
