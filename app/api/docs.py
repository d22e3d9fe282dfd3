"""/docs served from assets shipped with mirrorpool: many production networks reach no CDN."""

from __future__ import annotations

from pathlib import Path

import swagger_ui
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

ASSETS = "/docs/assets"


def install(app: FastAPI, title: str) -> None:
    """Serve Swagger UI at /docs with its JavaScript and CSS from this process."""
    # swagger-ui-py ships Swagger UI 5, which reads OpenAPI 3.1 (what FastAPI writes).
    static = Path(swagger_ui.__file__).parent / "static"
    app.mount(ASSETS, StaticFiles(directory=static), "docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{title} - API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )
