"""The search service: ``python -m client.serve`` (HTTP API + the page at ``/``), over the client library.

The app lives in ``client.serve.app`` (it needs the ``web`` extra: fastapi, uvicorn, python-multipart).
``static/`` holds the page and the one renderer (gallery.js, gallery.css) that the page and the
``--html`` reports of client.search / client.dedup share (client/gallery.py inlines it). Importing this
package imports nothing else, so the reports work without the web extra.
"""
