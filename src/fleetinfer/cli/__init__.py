"""The `fleetinfer` command line: thin commands that parse, build a config and call the library."""
