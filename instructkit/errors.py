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


def not_unicode(text: str) -> str | None:
    """What keeps `text` from being written as UTF-8 (a lone surrogate, as a JSON "\\ud800" escape
    or a non-UTF-8 command-line byte makes), or None: found on reading, not when a result is saved."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"holds a lone surrogate (\\u{ord(text[exc.start]):04x}) at character {exc.start}, which is not Unicode text"
    return None
