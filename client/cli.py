"""What every command-line tool of the client shares: the Triton URL option and error lines."""
from __future__ import annotations

import argparse
import sys

from client import spec


def add_triton_url(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--triton-url", help=f"Triton gRPC endpoint (default: $TRITON_URL or {spec.DEFAULT_TRITON_URL})")


def error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
