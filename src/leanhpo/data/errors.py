"""The one exception type of the data layer.

A single type lets the CLI and the Snakemake adapters turn every data problem into a clean,
non-zero exit without a traceback, while programming errors still surface as tracebacks.
"""

from leanhpo.exit_codes import EXIT_BAD_INPUT


class DataError(Exception):
    """Bad or unreachable data.

    Exits with leanhpo.exit_codes.EXIT_BAD_INPUT.

    The message must say what was tried, what was found and how to fix it, because the user
    reading it is usually hours into a study and far from this code.
    """

    exit_code = EXIT_BAD_INPUT
