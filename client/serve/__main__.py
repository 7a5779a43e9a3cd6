"""python -m client.serve [--host 127.0.0.1] [--port 8080]: the search service (HTTP API + the page at /).

Holds one Triton client and the products store open for its life (the embedded store is locked per process:
stop the service to run `python -m client.index` on the same folder, or add items with POST /index).
OpenAPI docs at /docs. Exit status 1 when the store cannot be opened.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from client.cli import add_triton_url, error


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m client.serve", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s: this machine only)")
    ap.add_argument("--port", type=int, default=8080)
    add_triton_url(ap)
    ap.add_argument("--qdrant-path", type=Path, help="embedded store folder (default $QDRANT_PATH or data/qdrant)")
    ap.add_argument("--catalog-root", type=Path, help="serve catalog images only from this folder (default: the "
                    "folder that holds every indexed image)")
    ap.add_argument("--upload-dir", type=Path, default=Path("data") / "uploads",
                    help="where POST /index keeps uploaded catalog images (default %(default)s)")
    ap.add_argument("--dedup-folder", type=Path, help="the folder indexed with `python -m client.dedup` that "
                    "POST /dedup/check looks in (default: the catalog root)")
    ap.add_argument("--dedup-name", help="its dedup collection name (default: derived from the folder, as client.dedup does)")
    ap.add_argument("--dedup-method", default="cnn", help="default method of POST /dedup/check (default %(default)s)")
    ap.add_argument("--max-upload-mb", type=float, default=32, help="largest upload accepted (default %(default)s MiB)")
    ap.add_argument("--video-frames", type=int, default=10, help="frames a video search samples (default %(default)s)")
    args = ap.parse_args(argv)
    if args.max_upload_mb <= 0 or args.video_frames < 1:
        ap.error("--max-upload-mb must be > 0 and --video-frames >= 1")
    try:
        import uvicorn

        from client.serve.app import create_app
        from client.serve.service import Service, Settings
    except ImportError as exc:
        error(f"the service needs the web extra ({exc.name} is missing): pip install -e '.[web]'")
        return 1
    from client.store import StoreError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    settings = Settings(triton_url=args.triton_url, qdrant_path=args.qdrant_path, catalog_root=args.catalog_root,
                        upload_dir=args.upload_dir, dedup_folder=args.dedup_folder, dedup_name=args.dedup_name,
                        dedup_method=args.dedup_method, max_upload_bytes=int(args.max_upload_mb * 2**20),
                        video_frames=args.video_frames)
    try:
        service = Service(settings)  # opened before binding: a locked or broken store is an error now, not per request
    except StoreError as exc:
        error(str(exc))
        return 1
    try:
        print(f"serving on http://{args.host}:{args.port}/ (API docs at /docs)", file=sys.stderr)
        uvicorn.run(create_app(settings, service=service), host=args.host, port=args.port, log_level="info")
    finally:
        service.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
