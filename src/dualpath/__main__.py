"""`python -m dualpath`: the same command as `dualpath`."""

from dualpath.cli.main import main

if __name__ == "__main__":
    main()
