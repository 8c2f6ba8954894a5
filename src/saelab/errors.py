"""The base of every error saelab raises on purpose: bad input, bad files, a failed run. The
command line prints these as one `saelab: error: ...` line (exit status 2), never a traceback."""


class SaelabError(Exception):
    """A problem saelab detected and can name (as opposed to a bug)."""


class UsageError(SaelabError):
    """Command-line flags that contradict each other or are missing."""
