"""Uses of a trained network (evaluate, verify, predict, plots, serve) and of many runs (sweep)."""
