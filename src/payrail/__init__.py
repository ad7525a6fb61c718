"""payrail: a payments service that never loses or invents money."""

from payrail import _python

_python.check()  # before anything newer-only is imported: a clear message, not a SyntaxError

__version__ = "0.1.0"
