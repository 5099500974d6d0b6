"""The playground (`/ui`, `/ui/` and its files): static, local, the API's own client. Its
page is `playground/index.html` with each registered kind's panel (`Wire.panel`) put in,
each panel's script served as `/ui/panels/<n>.js` after the shared `playground.js`."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response

FOLDER = Path(__file__).with_name("playground")
FILES = {path.name: path for path in FOLDER.iterdir() if path.suffix in (".js", ".css")}
NO_CACHE = {"Cache-Control": "no-cache"}


class Playground:
    def __init__(self, panels: Sequence) -> None:
        self.scripts = {f"panels/{number}.js": panel.script for number, panel in enumerate(panels)}
        tags = "".join(f'  <script src="/ui/{html.escape(name)}"></script>\n' for name in self.scripts)
        self.page = ((FOLDER / "index.html").read_text().replace("<!-- panels -->\n", "".join(p.html for p in panels))
                     .replace("<!-- panel scripts -->\n", tags))

    async def serve(self, request: Request) -> Response:
        name = request.path_params.get("file") or "index.html"
        if name == "index.html":
            return HTMLResponse(self.page, headers=NO_CACHE)
        if name in self.scripts:
            return Response(self.scripts[name], media_type="text/javascript", headers=NO_CACHE)
        if name in FILES:
            return FileResponse(FILES[name], headers=NO_CACHE)
        return JSONResponse({"error": f"no such file: {request.url.path}"}, status_code=404)
