"""checks/gpu.py on the CPU: the parts that need no GPU run (a torchrun run of train.py on
the real sample, export.py of its checkpoint, the loader), the CUDA parts are skipped
with the reason, and the table has one row per part."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from checks import gpu

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine run python -m checks.gpu itself")
def test_cpu_parts_run_and_gpu_parts_say_why_not(tmp_path):
    if not (gpu.SAMPLE / "annotations" / "instances_sample.json").is_file():
        pytest.skip(f"{gpu.SAMPLE} is absent (the real COCO sample is not checked out beside the repo)")
    proc = subprocess.run([sys.executable, "-m", "checks.gpu", "--device", "cpu", "--sample-arch", "small_dla",
                           "--sample-size", "64", "--loader-workers", "2", "--loader-batches", "2",
                           "--loader-batch", "4", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=500, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    print(proc.stdout)
    rows = [line.split(" | ") for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    parts = [r[0].lstrip("| ") for r in rows]
    assert parts == ["train step"] * 4 + ["inference"] * 4 + ["sample run", "export", "loader"], parts
    for r in rows[:8]:
        assert r[3] == gpu.NO_CUDA, r
    assert "torchrun x2 (gloo)" in rows[8][1] and "after epoch 2" in rows[8][2], rows[8]
    assert (tmp_path / "sample_run" / "ckpt.pt").is_file()
    if importlib.util.find_spec("onnxruntime") is None:
        assert rows[9][3].startswith("skipped: "), rows[9]
    else:
        assert rows[9][2] == "ok" and (tmp_path / "sample_run.onnx").is_file(), rows[9]
    assert float(rows[10][2].split()[0]) > 0, rows[10]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_is_one_clear_line():
    with pytest.raises(SystemExit, match="torch sees no CUDA GPU"):
        gpu.main(["--device", "cuda"])
