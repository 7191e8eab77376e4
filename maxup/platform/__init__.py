"""Ray-facing parts of maxup: Tune sweeps, Train runs and ad-hoc cluster jobs."""
