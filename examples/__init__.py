"""Example fleetinfer apps."""
