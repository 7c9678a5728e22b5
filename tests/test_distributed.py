"""The training entry point runs unchanged under torchrun with 2 CPU processes (gloo)."""
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None,
                    reason="torchrun is installed with torch")
def test_torchrun_two_cpu_processes_agree_and_write_one_checkpoint(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    out = tmp_path / "run"
    cmd = [torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "modeling_bigmoe.cli", "train", "--model", "baseline", "--samples_per_domain", "24",
           "--synthetic_size", "32", "--domains", "C,S,W", "--sources", "C,S", "--targets", "W",
           "--output_dir", str(out), "--max_steps", "4", "--use_cpu", "--ddp_backend", "gloo",
           "--per_device_train_batch_size", "4", "--eval_strategy", "steps", "--eval_steps", "2",
           "--save_strategy", "steps", "--save_steps", "4", "--report_to", "none", "--disable_tqdm", "true"]
    env = {**os.environ, "BIGMOE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    lines = re.findall(r"rank (\d): final step (\d+) weights checksum (\S+)", result.stdout)
    assert sorted(rank for rank, _, _ in lines) == ["0", "1"], result.stdout[-2000:]
    assert {step for _, step, _ in lines} == {"4"}
    assert len({checksum for _, _, checksum in lines}) == 1  # DDP kept both replicas identical
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-4"]
    assert (out / "model" / "model.safetensors").is_file() and (out / "results.json").is_file()
