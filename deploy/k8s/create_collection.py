"""Creates the products collection on the Qdrant cluster: sharded, replicated, payload-indexed, behind
its alias. Run by the Job in qdrant-collection.yaml with the settings of collection.json (both mounted
from the ConfigMap qdrant-collection); standard library only, so a plain python image runs it.

The collection is a placeholder until the first ``python -m client.index``: that creates the collection
of the served embedder (``products_<embedder id>``) with this one's shards, replication and write
consistency, and moves the alias to it (client/store/products.py, ``QdrantStore.ensure``).

Idempotent: an existing collection is checked against the settings, never changed, and a mismatch
fails the Job (re-sharding is a deliberate operation, not a side effect of `kubectl apply`). The API
key comes from $QDRANT_API_KEY (a Secret), never from the command line.
"""
from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request

# collection.json key -> where Qdrant reports it in GET /collections/{name} -> result.config
CHECKED = {
    "shard_number": ("params", "shard_number"),
    "replication_factor": ("params", "replication_factor"),
    "write_consistency_factor": ("params", "write_consistency_factor"),
}


class Qdrant:
    def __init__(self, url: str, api_key: str, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"api-key": self.api_key, "content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{method} {path}: HTTP {exc.code}: {exc.read().decode(errors='replace')[:500]}") from exc


def mismatches(want: dict, config: dict) -> list[str]:
    """What differs between collection.json (``want``) and an existing collection's ``config``."""
    out = []
    for key, (section, field) in CHECKED.items():
        have = config.get(section, {}).get(field)
        if have != want[key]:
            out.append(f"{key}: wanted {want[key]}, the collection has {have}")
    vectors = config.get("params", {}).get("vectors", {})
    for field in ("size", "distance"):
        if vectors.get(field) != want["vectors"][field]:
            out.append(f"vectors.{field}: wanted {want['vectors'][field]}, the collection has {vectors.get(field)}")
    return out


def wait_for_peers(db: Qdrant, peers: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            n = len(db.call("GET", "/cluster")["result"]["peers"])
            if n >= peers:
                return n
            why = f"{n} of {peers} peers have joined"
        except (OSError, RuntimeError, KeyError) as exc:  # URLError is an OSError
            why = str(exc)
        if time.monotonic() > deadline:
            raise SystemExit(f"the Qdrant cluster did not form in {timeout:.0f} s: {why}")
        print(f"waiting for the cluster: {why}", flush=True)
        time.sleep(5)


def main() -> int:
    with open(os.environ.get("COLLECTION_CONFIG", "/config/collection.json")) as fh:
        want = json.load(fh)
    db = Qdrant(os.environ["QDRANT_URL"], os.environ["QDRANT_API_KEY"])
    peers = wait_for_peers(db, want["expected_peers"], float(os.environ.get("CLUSTER_TIMEOUT", "900")))
    name = want["collection"]
    if db.call("GET", f"/collections/{name}/exists")["result"]["exists"]:
        bad = mismatches(want, db.call("GET", f"/collections/{name}")["result"]["config"])
        if bad:
            print(f"collection {name} exists with other settings:\n  " + "\n  ".join(bad), file=sys.stderr)
            return 1
        print(f"collection {name} exists with the wanted settings")
    else:
        db.call("PUT", f"/collections/{name}", {key: want[key] for key in ("vectors", *CHECKED)})
        print(f"created {name}: {want['shard_number']} shards x {want['replication_factor']} replicas on {peers} peers, "
              f"write consistency {want['write_consistency_factor']}")
    for field in want["keyword_fields"]:  # re-creating an existing index is a no-op
        db.call("PUT", f"/collections/{name}/index?wait=true", {"field_name": field, "field_schema": "keyword"})
    aliases = {a["alias_name"]: a["collection_name"] for a in db.call("GET", "/aliases")["result"]["aliases"]}
    if want["alias"] not in aliases:  # an existing alias may point at a newer collection: leave it
        db.call("POST", "/collections/aliases",
                {"actions": [{"create_alias": {"collection_name": name, "alias_name": want["alias"]}}]})
        aliases[want["alias"]] = name
    print(f"alias {want['alias']} -> {aliases[want['alias']]}; keyword indexes: {', '.join(want['keyword_fields'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
