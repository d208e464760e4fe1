"""Applications of a trained generator (deployable exports and the tools built on them)."""
