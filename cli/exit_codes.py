"""The `lethe` command's exit statuses, in one place: scripts branch on them, so they never change meaning."""

from enum import IntEnum


class ExitCode(IntEnum):
    """What a `lethe` command's exit status means (`lethe --help` and README list them)."""

    SUCCEEDED = 0
    # A signature or a checksum did not match (verify-report, adapters download): the bytes are not to be trusted.
    INVALID = 1
    # Click's own code for a bad command line; also a bad profile file, a missing API key or an unreadable input.
    USAGE = 2
    JOB_FAILED = 3  # the job failed or was cancelled
    TARGET_NOT_REACHED = 4  # the forget job succeeded but forgetting did not reach its target
    SHALLOW = 5  # the audit's verdict: an attack brought the forgotten knowledge back
    INCONCLUSIVE = 6  # the audit's verdict: the intervals could not decide
    API_ERROR = 7  # Lethe answered with an error ({error, detail}): refused, not found, conflict...
    UNREACHABLE = 8  # no answer from Lethe: connection refused, timeout, a stream that never came back
    PENDING = 9  # asked for an outcome that is not there yet (the audit is still queued or running)
    INTERRUPTED = 130  # Ctrl-C while watching: the job itself goes on


EXIT_CODES_HELP = (
    "Exit codes: 0 succeeded; 1 a signature or checksum did not match; 2 usage error (bad arguments, profile or "
    "input file); 3 the job failed or was cancelled; 4 forgetting did not reach its target; 5 audit verdict "
    "shallow; 6 audit verdict inconclusive; 7 Lethe answered with an error; 8 Lethe could not be reached; 9 the "
    "audit has not finished; 130 interrupted (the job goes on)."
)
