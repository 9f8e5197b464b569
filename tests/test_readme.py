"""README.md's snippets run as written: its quickstart command, then every python block in order
in one namespace (as a reader pastes them), then the torchrun line that names quickstart files.
Commands that need the network or several machines are not run."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from stitchkit.cli import main

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def commands(block: str) -> list[str]:
    """The shell commands of a block, continuation lines joined."""
    return [c.strip() for c in re.sub(r"\\\n\s*", " ", block).splitlines() if c.strip()]


def test_readme_snippets_run_as_written(tmp_path, monkeypatch, capsys):
    text = (ROOT / "README.md").read_text()
    shell = [c for b in blocks(text, "bash") for c in commands(b)]
    quick = [c for c in shell if c.startswith("stitchkit demo --toy")]
    assert quick == ["stitchkit demo --toy --out quickstart"]
    monkeypatch.chdir(tmp_path)
    assert main(shlex.split(quick[0])[1:]) == 0
    namespace: dict = {}
    for i, code in enumerate(blocks(text, "python")):
        exec(compile(code, f"README.md python block {i + 1}", "exec"), namespace)
    assert "[('toy-relu-32', 3), ('toy-relu-32', 17)]" in capsys.readouterr().out  # as its comment says
    assert namespace["res"].to_dict()["headline"] == "32 vs 16"
    assert isinstance(namespace["dmse"], torch.Tensor) and namespace["dmse"].shape == (32,)
    (run,) = [c for c in shell if c.startswith("torchrun --standalone") and "quickstart/" in c]
    argv = shlex.split(run)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STITCHKIT_DIST_TIMEOUT": "60"}
    proc = subprocess.run([str(TORCHRUN), *argv[1:]], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "toy-relu-32 itself" in proc.stdout
