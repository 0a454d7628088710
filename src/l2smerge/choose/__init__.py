"""Choosing a merge: comparing runs, reports, sweeps, the Pareto front and the selection rule."""
