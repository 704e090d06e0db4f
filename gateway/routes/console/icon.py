"""``/favicon.ico``: the console's icon (a 32x32 PNG inside an ICO, made for this project), at the path every browser
asks for, so no page visit logs a 404."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse

from gateway.routes.console.pages import STATIC_DIR

router = APIRouter()


@router.get("/favicon.ico")
async def favicon() -> FileResponse:
    return FileResponse(
        STATIC_DIR / "favicon.ico", media_type="image/vnd.microsoft.icon", headers={"cache-control": "max-age=86400"}
    )
