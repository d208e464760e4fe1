"""Neutral distributed plumbing: where this process runs (env, envvars, slurm), collectives, stop signals, the
run-directory lock (runlock) and leaving a process group in order (teardown)."""
