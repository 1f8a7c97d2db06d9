"""`python -m fleetinfer …` is the `fleetinfer` command."""

from fleetinfer.cli.app import main

if __name__ == "__main__":
    main()
