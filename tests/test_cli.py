"""The console script, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROBE = str(Path(sys.executable).parent / "probe")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROBE, *args], capture_output=True, text=True, timeout=600)


def test_help_lists_commands():
    r = run("--help")
    assert r.returncode == 0 and "models" in r.stdout and "info" in r.stdout


def test_models_lists_the_embedded_model():
    r = run("models", "--json")
    assert r.returncode == 0, r.stderr
    assert "smollm2" in json.loads(r.stdout)["models"]


def test_info_summarises_the_embedded_model(smol):
    r = run("info", "--model", "smollm2", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert (info["family"], info["n_layers"], info["d_model"], info["d_ff"]) == ("llama", 30, 576, 1536)
    assert "blocks.{l}.mlp.hook_post" in info["hook_points"] and "blocks.{l}.hook_resid_post" in info["hook_points"]
    assert info["n_params"] == sum(p.numel() for p in smol.model.parameters())


def test_bad_model_is_one_red_line_and_exit_2():
    r = run("info", "--model", "no-such-model")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown model 'no-such-model'")
    assert "Traceback" not in r.stderr


def test_bad_option_is_exit_2():
    r = run("info", "--dtype")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_corrupt_gguf_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "corrupt.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 64)
    r = subprocess.run([PROBE, "info", "--model", str(tmp_path / "corrupt.gguf")], capture_output=True, text=True,
                       timeout=600, env={**os.environ, "PROBE_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "corrupt.gguf" in lines[0], r.stderr
