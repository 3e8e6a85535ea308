"""The `dualpath` command. The only layer that prints."""
