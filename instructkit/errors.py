"""The one exception type that reaches the user as a message instead of a traceback."""


class UserError(Exception):
    """A problem the user can fix (bad input file, missing model, unreachable hub).

    The scripts print its message and exit with status 2; nothing is written after it is raised.
    """


MAX_LISTED_PROBLEMS = 20


def problems_error(problems: list[str]) -> UserError:
    """Every problem found in an input, one per line (the first 20, then how many more)."""
    more = len(problems) - MAX_LISTED_PROBLEMS
    return UserError("\n".join(problems[:MAX_LISTED_PROBLEMS]) + (f"\n... and {more} more problems" if more > 0 else ""))
