"""A server process tunes Python's collector once its app is built (api/main.py)."""

from __future__ import annotations

import gc

from payrail.entrypoints.http import main


def test_server_process_freezes_startup_heap_and_collects_less_often(monkeypatch, tmp_path):
    monkeypatch.setenv("PAYRAIL_DATABASE_URL", f"sqlite:///{tmp_path / 'gc.db'}")
    monkeypatch.setenv("PAYRAIL_MIGRATED", "1")
    monkeypatch.setattr(main, "guard_child", lambda: None)
    threshold = gc.get_threshold()
    try:
        main.app_from_env()
        assert gc.get_threshold()[0] == main.GC_GEN0_THRESHOLD
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
