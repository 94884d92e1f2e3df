"""The one exception type for mistakes a user can fix, and the one place that turns it into exit 2."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence

EXIT_USER_ERROR = 2


class UserError(ValueError):
    """A bad config, path, checkpoint or data file; the message says what to do."""


def entry_point(main: Callable[[Sequence[str] | None], int]) -> Callable[[Sequence[str] | None], int]:
    """Decorate an entry script's `main(argv) -> exit code`: a UserError prints one `error: ...` line on
    stderr and returns 2 instead of a traceback; every other exception propagates unchanged."""

    @functools.wraps(main)
    def run(argv: Sequence[str] | None = None) -> int:
        try:
            return main(argv)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR

    return run
