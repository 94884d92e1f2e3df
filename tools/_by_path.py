"""Lets `python tools/<tool>.py ...` (by path, as insightface users type it) run like `python -m tools.<tool>`.

A tool started by path has tools/ on sys.path instead of the repository root, so `import dataset` would fail.
Such a tool imports this module first and calls `rerun_as_module(__file__)`: the same command runs again as
`python -m tools.<tool>` with the repository root on PYTHONPATH and the working folder unchanged, so relative
paths in the arguments keep their meaning.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def rerun_as_module(tool_file: str) -> None:
    """Replace this process with `python -m tools.<stem of tool_file> <same arguments>`; never returns."""
    root = Path(tool_file).resolve().parent.parent
    python_path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    command = [sys.executable, "-m", f"tools.{Path(tool_file).stem}", *sys.argv[1:]]
    os.execve(sys.executable, command, {**os.environ, "PYTHONPATH": python_path})
