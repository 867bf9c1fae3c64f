"""Git revision and library versions (stdlib only; no library is imported to read them)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sslray import provenance
from sslray.provenance import git_revision, versions


def test_git_revision_of_this_checkout_and_outside_one(tmp_path: Path) -> None:
    assert git_revision(tmp_path) == "unknown"
    rev = git_revision()  # this package's checkout (an installed copy: unknown)
    assert rev == "unknown" or re.fullmatch(r"[0-9a-f]{4,}(-dirty)?", rev), rev


def test_dirty_suffix_and_a_hanging_git(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_git(status: str) -> Any:
        def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
            out = "abc1234\n" if "rev-parse" in cmd else status
            return subprocess.CompletedProcess(cmd, 0, out, "")
        return run

    monkeypatch.setattr(provenance.subprocess, "run", fake_git(" M sslray/x.py\n"))
    assert git_revision() == "abc1234-dirty"
    monkeypatch.setattr(provenance.subprocess, "run", fake_git(""))
    assert git_revision() == "abc1234"

    def hang(cmd: list[str], **kw: Any) -> None:
        raise subprocess.TimeoutExpired(cmd, kw["timeout"])

    monkeypatch.setattr(provenance.subprocess, "run", hang)
    assert git_revision(timeout=0.1) == "unknown"


def test_versions_of_installed_libraries_only() -> None:
    got = versions(("pydantic", "no_such_library_xyz"))
    assert set(got) == {"pydantic"} and got["pydantic"][0].isdigit()
