"""The one exception type for mistakes a user can fix."""


class UserError(Exception):
    """A problem with the user's input, data, options or run folder.

    The CLI prints ``str(error)`` as one line and exits with code 2; no traceback.
    The message says what is wrong, where (file, line, field, domain), and the fix.
    """

    exit_code = 2


class ChecksFailed(UserError):
    """A step ran but its output failed its checks (export's logits or int8 accuracy): exit code 1,
    as `metakd export` gives, so that `metakd run` reports the same failure the same way."""

    exit_code = 1
