"""The README's tour and the commands after it work as written, copied into an empty
directory as a new user would."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _tour() -> tuple[str, list[str]]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## A short tour"):]
    section = section[: section.index("\n## ", 1)] if "\n## " in section[1:] else section
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    after = section[section.index("```", section.index("```python") + 3) + 3:]
    commands = re.findall(r"`(tunebook [^`]*)`", after)
    return code, commands


def test_the_tour_and_its_commands_run_as_written(tmp_path):
    pytest.importorskip("matplotlib")
    code, commands = _tour()
    assert {"tunebook studies", "tunebook study show mlp", "tunebook report mlp"} <= set(commands), commands
    env = {k: v for k, v in os.environ.items() if k != "TUNEBOOK_STORAGE"}
    env["PYTHONPATH"] = str(REPO / "python")
    tour = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert tour.returncode == 0, tour.stderr[-3000:]
    assert "'complete': 8" in tour.stdout
    for command in commands:
        result = subprocess.run([sys.executable, "-m", "tunebook", *shlex.split(command)[1:]], cwd=tmp_path,
                                env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, (command, result.stderr[-3000:])
        assert "Traceback" not in result.stderr
    assert (tmp_path / "mlp-report.html").stat().st_size > 10_000
    assert (tmp_path / "tunebook.db").exists()
