"""The ``editseg`` command line: :mod:`editseg.cli.main` builds the parser and dispatches."""
