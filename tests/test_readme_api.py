"""The README's Python API section is the public API: every name, and an example that runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import qredo_openssl as q

README = Path(__file__).parent.parent / "README.md"


def section() -> str:
    text = README.read_text()
    start = text.index("## Python API")
    return text[start : text.index("\n## ", start + 1)]


def test_every_public_name_is_in_the_readme() -> None:
    shown = set(re.findall(r"`(?:q\.)?([A-Za-z_]\w*)", section()))
    public = set(q.__all__) - {"__version__"}
    assert public - shown == set()  # each one documented


@pytest.mark.real_openssl
def test_the_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    match = re.search(r"```python\n(.*?)```", section(), re.S)
    assert match is not None
    monkeypatch.chdir(tmp_path)
    exec(compile(match.group(1), "README.md", "exec"), {})
    assert (tmp_path / "keys" / "private.pem").exists()
