"""python -m client.rollout index DIR | switch | rollback | status: roll out a new embedder.

Each embedder has its own collection, ``products_<embedder id>`` (the id the served ensemble reports),
and searches read the alias ``products``. A new embedder version is rolled out in three steps:

    python -m client.rollout index DIR   # with Triton serving the new model (--triton-url): fills its
                                         # collection while the alias still serves the old one
    python -m client.rollout switch      # moves the alias to the collection of the served embedder
    python -m client.rollout rollback    # moves it back to the collection it replaced

``status`` lists the collections with their embedder ids, point counts and where the alias points.
``switch`` refuses an empty or missing collection, or one whose embedder or vector size differs from
the served model; it records the collection it replaced (in the new one's metadata), which ``rollback``
returns to. Old collections are kept until deleted by hand. Exit status: 0 done, 1 refused or failed
(``index``: 3 when some files were skipped, as ``client.index``).
"""
from __future__ import annotations

import argparse
import json
import sys

from client.cli import add_triton_url, error
from client.index import add_index_options, run_index
from client.store import QdrantStore, StoreError
from client.store.products import collection_for
from client.triton import RetrievalClient, TritonError

PREVIOUS = "previous"  # collection metadata key: the collection the alias pointed at before a switch to this one


def collections(store: QdrantStore) -> list[dict]:
    """Every products collection: name, embedder id, points, vector size, whether the alias points at it."""
    live = store.live()
    out = []
    for name in store.engine.collections():
        if not name.startswith(store.alias):
            continue
        meta = store.engine.metadata(name)
        out.append({"collection": name, "embedder_id": meta.get("embedder_id"), "points": store.engine.count(name),
                    "dim": store.engine.vector_size(name), "live": name == live, PREVIOUS: meta.get(PREVIOUS)})
    return out


def move_alias(store: QdrantStore, target: str, *, record: bool) -> str | None:
    """Points the alias at ``target`` (which must hold points); with ``record``, ``target`` remembers the
    collection it replaces. Returns that collection."""
    if not store.engine.exists(target) or target in store.engine.aliases():
        raise StoreError(f"no collection {target} at {store.where}; index it first with `python -m client.rollout index DIR`")
    n = store.engine.count(target)
    if n == 0:
        raise StoreError(f"{target} at {store.where} holds no points; index it first with `python -m client.rollout index DIR`")
    old = store.live()
    if old == target:
        return old
    if record and old is not None:
        store.engine.set_metadata(target, {PREVIOUS: old})
    store.engine.set_alias(store.alias, target)
    return old


def switch(store: QdrantStore, client: RetrievalClient) -> tuple[str | None, str]:
    """Makes the collection of the served embedder live; returns (old, new)."""
    target = collection_for(client.embedder_id())
    if store.engine.exists(target):
        recorded = store.engine.metadata(target).get("embedder_id")
        size = store.engine.vector_size(target)
        if recorded != client.embedder_id() or size != client.dim:
            raise StoreError(f"{target} records embedder {recorded} ({size}-d) but the server runs {client.embedder_id()} "
                             f"({client.dim}-d); re-index it with `python -m client.rollout index DIR`")
    return move_alias(store, target, record=True), target


def rollback(store: QdrantStore) -> tuple[str, str]:
    """Moves the alias back to the collection the live one replaced; returns (old, new)."""
    live = store.live()
    if live is None:
        raise StoreError(f"the alias {store.alias} points nowhere at {store.where}: nothing to roll back")
    previous = store.engine.metadata(live).get(PREVIOUS)
    if not previous:
        raise StoreError(f"{live} records no collection it replaced: nothing to roll back to "
                         f"(`python -m client.rollout status` lists the collections)")
    move_alias(store, previous, record=False)
    return live, previous


def print_status(rows: list[dict], alias: str, where: str, served: str | None) -> None:
    print(f"{where}: alias {alias} -> {next((r['collection'] for r in rows if r['live']), 'nothing')}"
          + (f"; the server runs embedder {served}" if served else ""))
    for r in rows:
        mark = "*" if r["live"] else " "
        serves = " (served)" if served and r["embedder_id"] == served else ""
        print(f" {mark} {r['collection']:<40} embedder {r['embedder_id'] or '(not recorded)'}{serves}, "
              f"{r['points']} points, {r['dim']}-d" + (f", replaced {r[PREVIOUS]}" if r[PREVIOUS] else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    add_index_options(sub.add_parser("index", help="index DIR into the collection of the served embedder; the alias stays"))
    add_triton_url(sub.add_parser("switch", help="point the alias at the collection of the served embedder"))
    sub.add_parser("rollback", help="point the alias back at the collection it pointed at before the last switch")
    st = sub.add_parser("status", help="collections, their embedder ids and point counts, where the alias points")
    st.add_argument("--json", action="store_true")
    add_triton_url(st)
    args = ap.parse_args(argv)

    if args.command == "index":
        return run_index(args, live=False)
    try:
        if args.command == "switch":
            with RetrievalClient(args.triton_url, retry_seconds=10) as client, QdrantStore() as store:
                old, new = switch(store, client)
            print(f"alias {store.alias}: {old or 'nothing'} -> {new}" if old != new else f"alias {store.alias} already points at {new}")
        elif args.command == "rollback":
            with QdrantStore() as store:
                old, new = rollback(store)
            print(f"alias {store.alias}: {old} -> {new}")
        else:
            served = None
            try:
                with RetrievalClient(args.triton_url, retry_seconds=0, timeout=10) as client:
                    served = client.embedder_id()
            except TritonError:
                pass  # status works with the server down
            with QdrantStore() as store:
                rows = collections(store)
            if args.json:
                print(json.dumps({"where": store.where, "alias": store.alias, "served_embedder_id": served, "collections": rows}, indent=1))
            else:
                print_status(rows, store.alias, store.where, served)
    except (TritonError, StoreError) as exc:
        error(str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
