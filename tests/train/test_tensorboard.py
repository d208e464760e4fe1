"""A real TensorBoard server reads a training run: losses, val metrics vs bicubic, comparison images."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from hpc_sr.config import load_config
from hpc_sr.dist.env import DistEnv
from hpc_sr.train.trainer import Trainer
from tests.conftest import PYTHON, subprocess_env, tiny_overrides, wait_for

pytestmark = pytest.mark.slow  # a real TensorBoard server process

SERVING = re.compile(r"TensorBoard \S+ at http://[^:/]+:(\d+)/")


def get_json(url: str, deadline: float) -> dict:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return json.loads(resp.read())
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.5)


def test_tensorboard_server_shows_the_run(tiny_shards: Path, tmp_path: Path) -> None:
    cfg = load_config(None, tiny_overrides(tiny_shards, tmp_path, name="tbrun", steps=6, pretrain=3))
    assert Trainer(cfg, DistEnv(), torch.device("cpu"), resume="never").run() == 0
    log = tmp_path / "tensorboard.log"
    with open(log, "wb") as err:  # the server keeps its own copy of the descriptor
        server = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "tensorboard.main",
                "--logdir",
                str(tmp_path),
                "--host",
                "127.0.0.1",
                "--port",
                "0",  # the server binds a free port itself and prints it: no race with other processes
                "--reload_interval",
                "1",
            ],
            env=subprocess_env(),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        found = wait_for(lambda: SERVING.search(log.read_text(errors="replace")), 90, "TensorBoard's URL")
        port = int(found.group(1))  # type: ignore[union-attr]
        deadline = time.time() + 90
        base = f"http://127.0.0.1:{port}/data/plugin"
        while True:
            scalars = get_json(f"{base}/scalars/tags", deadline)
            if "tbrun/tb" in scalars or time.time() > deadline:
                break
            time.sleep(1)
        tags = set(scalars["tbrun/tb"])
        assert {
            "train/loss_g_pixel",
            "train/loss_d",
            "train/images_per_s",
            "train/data_wait_share",
            "train/peak_mem_mb",
            "train/lr_g",
            "val/psnr",
            "val/ssim",
            "val_bicubic/psnr",
            "val_gain/psnr_db",
        } <= tags
        images = get_json(f"{base}/images/tags", deadline)
        assert "val/comparison" in images["tbrun/tb"]
        series = get_json(f"{base}/scalars/scalars?run=tbrun%2Ftb&tag=val%2Fpsnr", deadline)
        assert [point[1] for point in series] == [3, 6]
    finally:
        server.terminate()
        server.wait(timeout=20)
