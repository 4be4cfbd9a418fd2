"""The one exception type for mistakes a user can fix."""


class UserError(Exception):
    """A problem with the user's input, data, options or run folder.

    The CLI prints ``str(error)`` as one line and exits with code 2; no traceback.
    The message says what is wrong, where (file, line, field, domain), and the fix.
    """
