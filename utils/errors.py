"""The one exception type for mistakes a user can fix; entry scripts turn it into a message and exit 2."""


class UserError(ValueError):
    """A bad config, path, checkpoint or data file; the message says what to do."""
