"""``mono-quant serve``: a read-only web catalog (HTML pages and a JSON API).

See :mod:`mono_quant.scheduler.web.app` for the routes; :mod:`.views` holds what each page
shows, :mod:`.charts` the SVG geometry, :mod:`.params` the URL filters (``catalog list``'s).
Starlette, uvicorn and Jinja2 come with the ``web`` extra: ``pip install mono-quant[web]``.
"""

from mono_quant.scheduler.web.app import create_app

__all__ = ["create_app"]
