"""One exception type for every user-facing failure.

The CLI prints ``loragen: error: <message>`` (one line) and exits with status 2 for these;
anything else is a bug and keeps its traceback.
"""


class LoragenError(Exception):
    """A clear, one-line problem with the user's input (path, file, shapes, request)."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
