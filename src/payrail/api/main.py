"""Uvicorn entry point (factory): one app per server process, built from the environment."""

from __future__ import annotations

import os

from fastapi import FastAPI

from payrail.api.app import create_app
from payrail.config import Settings
from payrail.logging import configure
from payrail.supervise import guard_child


def app_from_env() -> FastAPI:
    configure(os.environ.get("PAYRAIL_LOG_LEVEL", "info"))
    guard_child()  # a child of `serve --workers N` exits when its parent dies
    # Migrations ran once in `payrail serve` before the workers started.
    return create_app(Settings.from_env(), migrate_db=os.environ.get("PAYRAIL_MIGRATED") != "1")
