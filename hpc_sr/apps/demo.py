"""`hpc-sr demo`: simulate a small deeplense_sr set, train the CPU quick-start config, evaluate vs bicubic."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from hpc_sr.config import apply_overrides, config_from_dict

# Mirror of configs/quickstart_cpu.yaml, so an installed package (without the repo's configs/) runs the same
# demo; tests/apps/test_demo.py keeps the two equal.
QUICKSTART: dict = {
    "data": {
        "source": "shards",
        "options": {"num_workers": 1},
        "path": "demo/data",
        "batch_size": 16,
        "patch_size": 24,
        "augment": True,
        "val_images": 64,
    },
    "model": {
        "g": {
            "arch": "srresnet",
            "options": {"channels": 32, "blocks": 4, "res_scale": 0.1},
            "bicubic_skip": True,
        }
    },
    "train": {
        "steps": 800,
        "pretrain_steps": 800,
        "lr_g": 4.0e-4,
        "schedule": "cosine",
        "warmup_steps": 50,
        "losses": [{"term": "pixel", "kind": "mse", "weight": 1.0}],
        "ema_decay": 0.995,
        "val_every": 400,
        "ckpt_every": 400,
        "keep_last": 2,
    },
    "log": {"name": "quickstart", "runs_dir": "demo/runs", "log_every": 50, "image_every": 400},
}


def quickstart_dict() -> dict:
    """configs/quickstart_cpu.yaml when run from a checkout, else the embedded copy."""
    path = Path(__file__).resolve().parents[1] / "configs" / "quickstart_cpu.yaml"
    if path.is_file():
        return yaml.safe_load(path.read_text())
    return QUICKSTART


def run_demo(
    workdir: str | Path = "demo",
    num: int = 1200,
    steps: int = 0,
    overrides: list[str] | None = None,
    seed: int = 0,
    hr_size: int = 150,
) -> int:
    """The quick start, end to end; prints the table against bicubic and where to look."""
    from hpc_sr.apps.evaluate import evaluate
    from hpc_sr.data.shards import simulate_to_shards
    from hpc_sr.train.entry import run_training

    t0 = time.time()
    workdir = Path(workdir)
    data_dir = workdir / "data"
    extra = [f"data.path={data_dir}", f"log.runs_dir={workdir / 'runs'}"]
    if steps:
        extra += [f"train.steps={steps}", f"train.pretrain_steps={steps}"]
    cfg = config_from_dict(apply_overrides(quickstart_dict(), extra + list(overrides or [])))
    if not (data_dir / "manifest.json").is_file():
        print(f"[demo] simulating {num} deeplense_sr pairs ({hr_size} px HR) into {data_dir}")
        simulate_to_shards(
            data_dir,
            num=num,
            preset="deeplense_sr",
            seed=seed,
            shard_size=1024,
            device="cpu",
            hr_size=hr_size,
            compression="none",
            split=(0.8, 0.1, 0.1),
        )
    else:
        print(f"[demo] reusing the data set in {data_dir}")
    print(
        f"[demo] training {cfg.model.g.arch} {cfg.model.g.options} for {cfg.train.steps} steps "
        f"(run {cfg.run_dir})"
    )
    code = run_training(cfg, resume="never")
    if code != 0:
        return code
    run_dir = cfg.run_dir
    print("[demo] evaluating on the test split (never seen in training)")
    evaluate(
        run_dir,
        data_dir,
        split="test",
        json_out=run_dir / "eval_test.json",
        save_images=8,
        images_dir=run_dir / "images",
    )
    minutes = (time.time() - t0) / 60
    print(f"[demo] done in {minutes:.1f} min")
    print(f"[demo] results: {run_dir / 'eval_test.json'}; comparison grids: {run_dir / 'images'}/")
    print(f"[demo] TensorBoard: tensorboard --logdir {run_dir / 'tb'} --host 127.0.0.1 --port 6006")
    return 0
