#!/usr/bin/env bash
# The demo, end to end on this machine: environment, models (quick profile, if missing), local Triton,
# a demo catalog indexed into the embedded Qdrant, and a search on a photo with several products.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash deploy/setup.sh
PY=.venv/bin/python
$PY -m export.build --profile quick
DEMO=${DEMO_DIR:-data/demo}
export QDRANT_PATH=${QDRANT_PATH:-$DEMO/qdrant}
[ -f "$DEMO/queries/truth.json" ] || $PY -m export.demo_data "$DEMO"
$PY -m deploy.local up
# index into the served embedder's collection, then point the alias at it: a demo store built by an earlier
# embedder (after a rebuild) is rolled forward instead of refused (client.rollout; exit 3 = some files skipped)
$PY -m client.rollout index "$DEMO/catalog" --category-from-folders || [ $? -eq 3 ]
$PY -m client.rollout switch
results=()
for q in "$DEMO"/queries/scene_*.jpg; do
  $PY -m client.search "$q" --top-k 5
  out="$DEMO/results/$(basename "$q" .jpg).json"
  mkdir -p "$DEMO/results"
  $PY -m client.search "$q" --top-k 5 --json --html "${out%.json}.html" > "$out"
  results+=("$out")
done
$PY -m deploy.check_demo "$DEMO/queries/truth.json" "${results[@]}"
echo "result galleries: $DEMO/results/*.html"
echo "demo finished in $(( $(date +%s) - start )) s; the server keeps running: python -m deploy.local down"
