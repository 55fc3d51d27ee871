"""Sweep launchers (local, Slurm, Ray); plugins may register more. One module per registered name."""
