"""The one training entry used by `hpc-sr train`, torchrun, srun and the submitit launcher."""

from __future__ import annotations

from hpc_sr.config import Config, load_config
from hpc_sr.dist import collectives
from hpc_sr.dist import env as dist_env
from hpc_sr.dist.runlock import RunLock
from hpc_sr.errors import TrainingError


def run_training(cfg: Config, resume: str = "auto") -> int:
    """Set up distributed state from the environment, train, tear down; returns the exit code."""
    from hpc_sr.train.components import check_config
    from hpc_sr.train.trainer import Trainer

    plan = check_config(cfg)  # once, before any process group or file: a typo fails at once
    env = dist_env.DistEnv.from_environment()
    dist_env.configure_threads(env)
    device = dist_env.select_device(env)
    dist_env.init_distributed(env, device, timeout_s=cfg.dist.timeout_s)
    lock = _lock_run_dir(cfg, env, device)
    clean = False
    try:
        guard = lock.check if lock is not None else None  # rank 0: stop once another run took the directory
        code = Trainer(cfg, env, device, resume=resume, plan=plan, guard=guard).run()
        clean = True
        return code
    except RuntimeError as exc:
        if env.distributed and is_collective_failure(exc):
            raise TrainingError(
                f"rank {env.rank}: a collective operation failed ({str(exc).splitlines()[0]}); another rank "
                f"probably died or hung past dist.timeout_s={cfg.dist.timeout_s}. Restart the job: it "
                f"resumes from {cfg.run_dir / 'checkpoints' / 'latest'}"
            ) from exc
        raise
    finally:
        try:
            dist_env.shutdown_distributed(wait_for_peers=clean)
        finally:
            if lock is not None:  # on success, requeue (exit 3), errors; a crash leaves it to the stale rules
                lock.release()  # removes the lock file only while it is ours (never a new holder's)


def _lock_run_dir(cfg: Config, env: dist_env.DistEnv, device: object) -> RunLock | None:
    """Rank 0 takes the run-directory lock before anything is written; every rank learns the outcome."""
    import torch

    lock = RunLock(cfg.run_dir) if env.is_main else None
    error: TrainingError | None = None
    if lock is not None:
        try:
            lock.acquire()
        except TrainingError as exc:
            error = exc
    if collectives.any_rank(error is not None, torch.device(str(device))):
        shutdown = dist_env.shutdown_distributed
        shutdown(wait_for_peers=False)
        raise error or TrainingError(f"rank 0 could not lock the run directory {cfg.run_dir} (see its error)")
    return lock


def is_collective_failure(exc: BaseException) -> bool:
    """A torch.distributed error caused by a peer (dead, hung or unreachable), not by this rank's own code."""
    import torch.distributed as dist

    text = str(exc)
    return isinstance(exc, dist.DistError) or any(
        s in text for s in ("gloo", "NCCL", "Connection closed", "Connection reset", "Timed out", "timed out")
    )


def train_main(config_path: str | None, overrides: list[str] | None = None, resume: str = "auto") -> int:
    """Load the config (YAML + dotted overrides) and train."""
    return run_training(load_config(config_path, overrides or []), resume=resume)
