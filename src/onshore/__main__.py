"""``python -m onshore``: the same as the ``onshore`` command."""

from onshore.cli.app import main

if __name__ == "__main__":
    main()
