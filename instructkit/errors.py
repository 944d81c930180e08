"""The one exception type that reaches the user as a message instead of a traceback."""


class UserError(Exception):
    """A problem the user can fix (bad input file, missing model, unreachable hub).

    The scripts print its message and exit with status 2; nothing is written after it is raised.
    """
