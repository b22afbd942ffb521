"""The README's tour and the commands after it work as written, copied into an empty
directory as a new user would."""

from __future__ import annotations

import re
import shlex
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


def test_the_tour_and_its_commands_run_as_written(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    from tunebook.cli import main

    code, commands = _tour()
    assert {"tunebook studies", "tunebook study show mlp", "tunebook report mlp"} <= set(commands), commands
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TUNEBOOK_STORAGE", raising=False)
    exec(compile(code, "README.md (tour)", "exec"), {"__name__": "__main__"})
    assert "'complete': 8" in capsys.readouterr().out
    for command in commands:
        try:
            status = main(shlex.split(command)[1:])
        except SystemExit as exit_info:  # --help and --version exit through argparse
            status = exit_info.code
        captured = capsys.readouterr()
        assert status == 0, (command, captured.err)
        assert "Traceback" not in captured.err
    assert (tmp_path / "mlp-report.html").stat().st_size > 10_000
    assert (tmp_path / "tunebook.db").exists()
