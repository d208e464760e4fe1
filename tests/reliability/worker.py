"""Run by the reliability tests under torchrun (or as a bare rank): the real training entry, plus markers.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/reliability/worker.py OUT k=v ...

Writes ``OUT/pid_rank<r>`` at start and ``OUT/exit_rank<r>`` (the entry's return code, or the exception's
type and message) at the end, so a test can signal one rank and read every rank's own exit code (torchrun
itself only reports "a child failed"). ``RELI_STEP_SLEEP`` (seconds) slows each training step down so that
a test can aim a signal at a step; it only adds a sleep after the step.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main(out_dir: str, overrides: list[str]) -> int:
    out = Path(out_dir)
    rank = int(os.environ.get("RANK", "0"))
    (out / f"pid_rank{rank}").write_text(str(os.getpid()))
    from hpc_sr.dist.signals import install_stop_flag

    install_stop_flag()  # like the launchers: a signal during start-up is not lost
    if os.environ.get("RELI_STEP_SLEEP"):  # the trainer's own test hook sleeps after every step
        os.environ["HPC_SR_FAULT_STEP_SLEEP"] = os.environ["RELI_STEP_SLEEP"]
    from hpc_sr.train.entry import train_main

    try:
        code = train_main(None, overrides, resume=os.environ.get("RELI_RESUME", "auto"))
    except BaseException as exc:
        (out / f"exit_rank{rank}").write_text(f"{type(exc).__name__}: {exc}")
        raise
    (out / f"exit_rank{rank}").write_text(str(code))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
