"""`python -m hpc_sr.studies STUDY ...`: the same as `hpc-sr study STUDY ...`."""

from hpc_sr.studies import main

if __name__ == "__main__":
    raise SystemExit(main(prog="python -m hpc_sr.studies"))
