"""User-facing errors: each says what was wrong and what to do about it."""


class ProxyFDAError(ValueError):
    """Base class for errors caused by the user's input (a spec, a file, a parameter)."""
