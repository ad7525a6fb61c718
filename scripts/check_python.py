"""Refuse, with a clear message, a Python that pyproject.toml's requires-python excludes.

Run by the Makefile before it creates .venv; payrail checks the same at start-up
(payrail/support/python_version.py). Standard library only, and no syntax newer than Python 3.6.
"""

import re
import sys
from pathlib import Path

TOO_OLD = (
    "payrail needs Python %d.%d or newer (pyproject.toml requires-python); %s is %d.%d. "
    "Run make with PYTHON=python3.11 (or newer)."
)
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def main():
    found = re.search(r'^requires-python\s*=\s*">=(\d+)\.(\d+)"', PYPROJECT.read_text(), re.M)
    if found is None:
        sys.exit('pyproject.toml: requires-python must read ">=X.Y"')
    needed = (int(found.group(1)), int(found.group(2)))
    if sys.version_info[:2] < needed:
        sys.exit(TOO_OLD % (needed + (sys.executable,) + tuple(sys.version_info[:2])))


if __name__ == "__main__":
    main()
