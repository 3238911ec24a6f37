"""One exception type for every user-facing failure, each with a stable machine-readable code.

The CLI prints ``loragen: error: <code>: <message>`` (one line) and exits with status 2 for these
(exit codes are listed in the README). ``code`` is a short lowercase identifier that scripts may
match on; it never changes for a given kind of failure. Subclasses set their own default code
(``BundleError`` uses the codes shared with the Kotlin and Swift bundle readers).
"""


class LoragenError(Exception):
    """A clear, one-line problem with the user's input (path, file, shapes, request)."""

    code = "input"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(" ".join(str(message).split()))
        if code is not None:
            self.code = code


class LoragenWarning(UserWarning):
    """Something the user should know that does not stop the job; the CLI prints it as one
    ``loragen: warning: <message>`` line (third-party warnings are hidden unless --verbose)."""
