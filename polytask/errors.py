"""The one error class for user mistakes: the CLI prints its message as one line and exits 2."""


class PolytaskError(Exception):
    """Something the user can fix: a bad file, name, option or input. The message says how."""
