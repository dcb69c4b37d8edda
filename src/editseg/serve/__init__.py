"""``editseg serve``: the model loaded once behind an HTTP JSON API and a web page.

Layers, each importable on its own:

- :mod:`.limits` — the request limits (bytes, pixels, expressions, queue, timeout);
- :mod:`.engine` — one worker thread that feeds the model one batch at a time, grouping
  concurrent requests by image (one ``set_image`` per distinct image, all their expressions in
  one ``predict``); no web dependencies;
- :mod:`.encoding` — results as JSON (COCO RLE, PNGs as data URLs, boxes, timings);
- :mod:`.examples` — built-in shapes-world scenes, so the page works on the default model;
- :mod:`.app` — the ASGI app (FastAPI): ``/`` page, ``/api/segment``, ``/api/health``,
  ``/openapi.json`` and ``/docs``; needs ``pip install editseg[serve]``;
- :mod:`.server` — ``run_server``: uvicorn on 127.0.0.1 unless told otherwise.

The service only imports the core (``editseg.api``, ``images``, ``masks``, ``errors``,
``config``, ``viz``, ``data``).
"""

from .limits import ServeLimits

__all__ = ["ServeLimits"]
