"""Neutral distributed plumbing: where this process runs (env), collectives, stop signals."""
