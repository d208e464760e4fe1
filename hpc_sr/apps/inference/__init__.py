"""Survey-scale inference: ``hpc-sr upscale`` over whole catalogs, on one process or many ranks, resumable
exactly once through a ledger in the output directory, with error maps for stochastic generators."""
