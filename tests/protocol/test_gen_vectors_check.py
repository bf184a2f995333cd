"""tools/gen-vectors --check: the committed vectors are what the generators produce."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOUNDATION = ["encoding", "envelope", "identifiers", "jobspec"]


def _run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(root / "tools" / "gen-vectors"), *args],
        capture_output=True, text=True, timeout=300, cwd=root,
    )  # fmt: skip


def test_all_vector_files_are_up_to_date() -> None:
    result = _run(ROOT, "--check")
    assert result.returncode == 0, result.stderr


def test_check_names_a_stale_file(tmp_path: Path) -> None:
    # A copy of tools/ and spec/ (no .venv there, so the script keeps this interpreter).
    shutil.copytree(ROOT / "tools", tmp_path / "tools", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "spec", tmp_path / "spec")
    assert _run(tmp_path, "--check", *FOUNDATION).returncode == 0
    stale = tmp_path / "spec" / "vectors" / "identifiers.json"
    stale.write_text(stale.read_text().replace("cpn:gpu/nvidia/h100", "cpn:gpu/nvidia/h200", 1))
    (tmp_path / "spec" / "vectors" / "jobspec.json").unlink()
    result = _run(tmp_path, "--check", *FOUNDATION)
    assert result.returncode == 1
    assert "spec/vectors/identifiers.json" in result.stderr
    assert "spec/vectors/jobspec.json" in result.stderr
    assert "encoding.json" not in result.stderr
    # Regenerating repairs both, byte for byte.
    assert _run(tmp_path, *FOUNDATION).returncode == 0
    assert stale.read_bytes() == (ROOT / "spec" / "vectors" / "identifiers.json").read_bytes()
    assert _run(tmp_path, "--check", *FOUNDATION).returncode == 0


def test_unknown_area_is_an_error() -> None:
    result = _run(ROOT, "--check", "no-such-area")
    assert result.returncode == 2
    assert "no-such-area" in result.stderr
