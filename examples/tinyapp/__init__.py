"""A tiny app with a model, for `fleetinfer bench` (see README, "Benchmark your own task")."""
