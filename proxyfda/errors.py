"""User-facing errors: each says what was wrong and what to do about it."""


class ProxyFDAError(ValueError):
    """Base class for errors caused by the user's input (a spec, a file, a parameter)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters), or its type's name: enough
    of a library's error to quote inside a sentence of ours."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
