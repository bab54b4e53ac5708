"""The dashboard: a local web page over the store, and its JSON API.

`create_app` is the whole thing as an ASGI app (Starlette); `serve` mounts
the same app at `/`. The API answers with the very query functions the CLI
calls (through `queryspec`), the page is static files shipped in the
package (no build step, no other origin).
"""

from roder_analyticsd.web.app import create_app, mount_dashboard

UPLOT_VERSION = "1.6.32"  # static/vendor/README.md

__all__ = ["UPLOT_VERSION", "create_app", "mount_dashboard"]
