"""Every entry script: one `error:` line and exit 2 for a user mistake, and tools that also run by path."""

import subprocess
import sys
from pathlib import Path

import pytest

from utils.errors import UserError, entry_point

ROOT = Path(__file__).resolve().parent.parent
TOOLS = sorted(p.stem for p in (ROOT / "tools").glob("*.py") if "def main(" in p.read_text())


def test_entry_point_turns_a_user_error_into_one_line_and_exit_2(capsys):
    @entry_point
    def main(argv=None):
        raise UserError(f"file '{argv[0]}' does not exist; pass an existing file.")

    assert main(["missing.rec"]) == 2
    assert capsys.readouterr().err == "error: file 'missing.rec' does not exist; pass an existing file.\n"


def test_entry_point_lets_programming_errors_through():
    @entry_point
    def main(argv=None):
        raise KeyError("a bug, not the user's mistake")

    with pytest.raises(KeyError):
        main([])


def test_every_tool_main_is_an_entry_point():
    import importlib

    for name in TOOLS:
        main = importlib.import_module(f"tools.{name}").main
        assert getattr(main, "__wrapped__", None) is not None, f"tools/{name}.py main() is not @entry_point"


def test_every_tool_reruns_as_a_module_before_importing_the_project():
    """Regression: `python tools/pack_rec.py` ended in ModuleNotFoundError: No module named 'dataset'."""
    for name in TOOLS:
        source = (ROOT / "tools" / f"{name}.py").read_text()
        guard = source.find("_by_path.rerun_as_module(__file__)")
        first_project_import = min(source.find(f"\nfrom {package}") % len(source) for package in
                                   ("utils", "dataset", "backbones", "eval", "tools", "losses", "dpap"))
        assert 0 <= guard < first_project_import, f"tools/{name}.py imports the project before the by-path guard"


def test_tool_runs_by_path_from_another_folder(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "make_bin.py"), "--help"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:")


def test_tool_by_path_keeps_relative_paths_and_exit_code(tmp_path):
    (tmp_path / "empty").mkdir()
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "pack_rec.py"), "empty", "out"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "empty" in result.stderr and len(result.stderr.splitlines()) == 1
