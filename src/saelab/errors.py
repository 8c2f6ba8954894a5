"""The errors saelab raises on purpose: bad input, bad files, a failed run. The command line
prints them as one `saelab: error: ...` line (exit status 2), never a traceback. Every module
may import this one; it imports nothing of saelab."""


class SaelabError(Exception):
    """A problem saelab detected and can name (as opposed to a bug)."""


class UsageError(SaelabError):
    """Command-line flags that contradict each other or are missing."""


class ConfigError(SaelabError, ValueError):
    """A configuration value is missing, out of range or inconsistent."""


class ArgumentError(SaelabError, TypeError):
    """A Python API function called with an argument of the wrong type."""


class DataError(SaelabError, ValueError):
    """Activations that cannot be used: wrong shape, dtype or size, or not finite."""
