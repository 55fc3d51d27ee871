"""Every command in the README runs as written on a fresh checkout (downloads and installs excepted)."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
# Steps the test cannot or must not repeat: installing (CI does it, .ci/run), the test suite itself,
# and downloads (no network in tests).
NOT_RUN = (r"^python3 -m venv ", r"^\. \.venv/bin/activate$", r"^pip install ", r"^pytest( |$)",
           r"^robustbench-mtl prepare ")


def readme_commands(text: str) -> list[str]:
    """The shell commands of the README's bash blocks, in order; `a && b` gives a and b."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            for part in line.split("&&"):
                command = " ".join(shlex.split(part, comments=True))
                if command:
                    commands.append(command)
    return commands


def test_readme_commands_are_all_accounted_for() -> None:
    commands = readme_commands(README.read_text())
    runnable = [c for c in commands if not any(re.search(p, c) for p in NOT_RUN)]
    assert all(c.startswith("robustbench-mtl ") for c in runnable), runnable  # nothing slips past the test
    assert any(" run " in f" {c} " for c in runnable) and any("leaderboard" in c for c in runnable)
    assert not any("--out leaderboards" in c for c in runnable)  # would overwrite the committed tables


@pytest.mark.slow
def test_readme_commands_run_as_written(tmp_path: Path) -> None:
    exe = shutil.which("robustbench-mtl")
    assert exe, "robustbench-mtl is not on PATH: install the package as the README says"
    for command in readme_commands(README.read_text()):
        if any(re.search(p, command) for p in NOT_RUN):
            continue
        args = shlex.split(command)
        res = subprocess.run([exe, *args[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=1200)
        assert res.returncode == 0, f"`{command}` failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
        assert "Traceback" not in res.stderr, command
    assert (tmp_path / "runs" / "demo" / "final.json").exists()
    assert list((tmp_path / "my-leaderboards").glob("*.md"))
