"""The one exception type of export and predict (no heavy imports: the CLI reports bad input
before torch is loaded)."""

from leanhpo.exit_codes import EXIT_BAD_INPUT


class ExportError(Exception):
    """A folder that is not a (valid) export, or bad input to export or predict.

    Exits with leanhpo.exit_codes.EXIT_BAD_INPUT: a rerun without a fix fails the same way. The
    message names the file (and row) and says what to do.
    """

    exit_code = EXIT_BAD_INPUT
