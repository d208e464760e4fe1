"""`python -m hpc_sr` is the same as the `hpc-sr` command."""

from hpc_sr.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
