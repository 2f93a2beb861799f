"""A command's failure as the user sees it: one line on stderr and an exit status from `ExitCode`."""

import sys

from cli.exit_codes import ExitCode


class CliError(Exception):
    """Stops a command: `message` goes to stderr, `exit_code` is the process's status."""

    def __init__(self, message: str, exit_code: ExitCode) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def render_error(error: CliError) -> None:
    """`lethe: <message>` on stderr, plain text: scripts grep it, and a terminal needs no colour to read it."""
    print(f"lethe: {error.message}", file=sys.stderr)
