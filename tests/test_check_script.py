"""bench/gpu_check.sh --cpu-dry-run: every step of the GPU check runs and writes its figures, resume is exact.

The test's name must not contain cuda, gpu or device: the script runs `pytest -k "cuda or gpu or device"`.
"""

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.sh"

# Each step's file holds the command, then its output; these words show that the figure is there.
FIGURES = {
    "environment": "torch",
    "pytest_cuda": "passed",
    "backbone_vit_nano": "sdpa img/s",
    "backbone_vit_mini": "sdpa img/s",
    "train_step_eager": "+DPAP+EHSM",
    "plan_memory": "planned / measured",
    "dpap": "speed-up",
    "partial_fc": "ms/step",
    "demo_data": "wrote",
    "train_first_half": "step 2/",
    "train_resumed": "step 4/",
    "train_uninterrupted": "step 4/",
    "train_repeat": "step 4/",
    "compare_resume": "equal: steps 4 and 4",
    "compare_repeat": "equal: steps 4 and 4",
    "eval_cpu_fp32": "TAR (%) @ FAR",
    "eval_cpu_bf16": "TAR (%) @ FAR",
    "compare_tables": "agree",
    "train_step_compile": "compile True",
}


@pytest.mark.slow
def test_cpu_dry_run_writes_every_figure_and_the_resumed_run_equals_the_uninterrupted_one(tmp_path):
    env = {**os.environ, "GPU_CHECK_WORK": str(tmp_path / "work")}
    finished = subprocess.run([str(SCRIPT), "--cpu-dry-run", str(tmp_path / "out")], env=env,
                              capture_output=True, text=True, timeout=2100)
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert finished.returncode == 0, summary
    statuses = dict(line.split()[:2] for line in summary.splitlines()[1:-1])
    assert statuses == dict.fromkeys(FIGURES, "ok")
    for name, figure in FIGURES.items():
        assert figure in (tmp_path / "out" / f"{name}.txt").read_text(), name
    last_line = (tmp_path / "out" / "compare_resume.txt").read_text().splitlines()[-1]
    assert last_line.startswith("equal"), last_line
