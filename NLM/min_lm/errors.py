"""One exception type for mistakes a user can fix (bad path, bad flag, malformed file).

Library code raises `UserError` (or a subclass of ValueError where docs/api.md promises one) with a
message that names the file, line or flag at fault. The command-line layer turns it into a single
`error: ...` line and a non-zero exit, so a user never sees a traceback for their own mistake.
"""


class UserError(ValueError):
    """A problem with the user's input, reported as one line without a traceback."""
