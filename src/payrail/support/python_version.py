"""The start-up check of the Python version against the installed requires-python.

pyproject.toml states the supported versions once; this reads them back from the installed
package's metadata, so a too-old interpreter stops with a message instead of a SyntaxError or
ImportError deep inside. Written in syntax that old interpreters can still parse.
"""

import re
import sys

# %-formatting and no f-strings: this module must parse on interpreters it then refuses.
TOO_OLD = (
    "payrail needs Python %d.%d or newer (its requires-python); this is %d.%d at %s. "
    "Recreate the environment with a newer python3: make clean && make PYTHON=python3.11"
)


class UnsupportedPython(RuntimeError):
    """This interpreter is older than payrail's requires-python."""


def required_minimum():
    """(major, minor) from the installed metadata's `>=X.Y`, or None when not installed."""
    try:
        from importlib.metadata import PackageNotFoundError, metadata
    except ImportError:  # Python < 3.8: certainly too old
        return (3, 11)
    try:
        spec = metadata("payrail").get("Requires-Python") or ""
    except PackageNotFoundError:
        return None
    found = re.match(r"\s*>=\s*(\d+)\.(\d+)", spec)
    return (int(found.group(1)), int(found.group(2))) if found else None


def check(version_info=None):
    """Raise UnsupportedPython with what to do, if this interpreter is too old."""
    version = tuple((version_info or sys.version_info)[:2])
    needed = required_minimum()
    if needed is not None and version < needed:
        raise UnsupportedPython(TOO_OLD % (needed + version + (sys.executable,)))
