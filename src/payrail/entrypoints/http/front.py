"""The front door: `GET /` says where everything is; `/docs` (Swagger UI) and `/redoc` browse
the OpenAPI document with files served by payrail itself, so they work offline.

The Swagger UI and Redoc files are those bundled in the `fastapi-offline` package (MIT,
its licence in its dist-info); payrail serves them from there, with no CDN in any page.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from payrail.config import Settings
from payrail.entrypoints.http.errors import envelope
from payrail.entrypoints.http.observe import API_PREFIX

ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
ASSETS_PATH = f"{API_PREFIX}/docs-assets"
DOCS_PATH = f"{API_PREFIX}/docs"
REDOC_PATH = f"{API_PREFIX}/redoc"
OPENAPI_PATH = f"{API_PREFIX}/openapi.json"


def pointers(settings: Settings) -> dict[str, str]:
    """What `GET /` answers: the paths a newcomer looks for first."""
    return {
        "mode": "sandbox" if settings.sandbox else "production",
        "api": API_PREFIX,
        "docs": "/docs",
        "redoc": "/redoc",
        "openapi": OPENAPI_PATH,
        "dashboard": "/dashboard",
        "health": "/health",
        "ready": "/ready",
    }


def install(app: FastAPI, settings: Settings) -> None:
    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS_DIR), name="docs-assets")

    @app.get("/", include_in_schema=False)
    async def root() -> JSONResponse:
        return envelope(
            True,
            "payrail: the API is under /api/v1; browse it at /docs; the operator dashboard is "
            "at /dashboard.",
            pointers(settings),
            200,
        )

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=OPENAPI_PATH,
            title="payrail API",
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
        )

    @app.get(REDOC_PATH, include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=OPENAPI_PATH,
            title="payrail API",
            redoc_js_url=f"{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_PATH}/favicon.png",
            with_google_fonts=False,
        )

    @app.get("/docs", include_in_schema=False)
    async def docs_redirect() -> RedirectResponse:
        return RedirectResponse(DOCS_PATH)

    @app.get("/redoc", include_in_schema=False)
    async def redoc_redirect() -> RedirectResponse:
        return RedirectResponse(REDOC_PATH)
