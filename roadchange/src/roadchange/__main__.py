"""`python -m roadchange` runs the `roadchange` command line."""

from roadchange.cli import main

if __name__ == "__main__":
    main()
