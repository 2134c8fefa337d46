"""The exceptions skerry raises for bad input and broken set-ups.

    SkerryError                 every error skerry raises on purpose
     ├── ConfigError            a bad option, flag or data dir
     ├── SetupError             something skerry needs is missing (a program, a port)
     └── AdaptorUnavailable     an adaptor's storage cannot be reached now (also a ConnectionError)
"""


class SkerryError(Exception):
    """Base class: ``code`` is machine-readable, ``str(e)`` is a sentence for people."""

    code = "skerry_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ConfigError(SkerryError):
    code = "bad_config"


class SetupError(SkerryError):
    code = "setup_failed"


class AdaptorUnavailable(SkerryError, ConnectionError):
    code = "adaptor_unavailable"
