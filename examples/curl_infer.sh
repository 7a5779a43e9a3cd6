#!/usr/bin/env bash
# Calls the Triton ensemble `retrieval` over HTTP (KServe v2 protocol) with curl: one image in, its
# objects out. Needs bash, curl and jq; no project code.
#
#   TRITON_HTTP=127.0.0.1:8000 examples/curl_infer.sh photo.jpg
#
# How the image travels. The input `image_bytes` is a BYTES tensor of shape [1]. In the plain JSON
# form a BYTES element is a JSON string, i.e. UTF-8 text: JPEG bytes are not valid UTF-8, and Triton
# does not base64-decode strings (a base64 string reaches the model as text and is refused as "not a
# known image format"). So the image is sent with Triton's binary tensor data extension: the body is
# the JSON request, then the tensor's raw bytes; the input's "binary_data_size" gives their length,
# and the header Inference-Header-Content-Length gives the length of the JSON part. A BYTES element in
# binary form is a 4-byte little-endian length followed by the bytes, hence binary_data_size = 4 + size.
# The outputs are asked for as JSON (no "binary_data"), which jq reads: numbers flattened row-major,
# BOOL as true/false, BYTES as strings.
#
# Prints one line per valid row: index, score, box (x1, y1, x2, y2 in original pixels), category and
# the first embedding values. Exit status 1 with the HTTP status and Triton's {"error": ...} on
# stderr when Triton refuses the request, 2 when it cannot be reached. See docs/triton-api.md.
set -euo pipefail

image=${1:?usage: TRITON_HTTP=host:port $0 IMAGE}
host=${TRITON_HTTP:-127.0.0.1:8000}
url="http://$host/v2/models/retrieval/infer"

size=$(wc -c < "$image")
header=$(printf '{"inputs":[{"name":"image_bytes","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":%d}}],' $((size + 4)))
header+='"outputs":[{"name":"boxes"},{"name":"scores"},{"name":"valid"},{"name":"category"},{"name":"embeddings"},{"name":"embedder_id"}]}'
header_length=$(printf '%s' "$header" | wc -c)

# the 4-byte little-endian length of the one BYTES element, as octal escapes for printf
le32=$(printf '\\%03o\\%03o\\%03o\\%03o' $((size & 255)) $((size >> 8 & 255)) $((size >> 16 & 255)) $((size >> 24 & 255)))

response=$(mktemp)
trap 'rm -f "$response"' EXIT
# shellcheck disable=SC2059  # $le32 is a format made of octal escapes only
status=$({ printf '%s' "$header"; printf "$le32"; cat "$image"; } |
  curl -sS -o "$response" -w '%{http_code}' -X POST "$url" \
    -H 'Content-Type: application/octet-stream' \
    -H "Inference-Header-Content-Length: $header_length" \
    --data-binary @-) || { echo "error: cannot reach Triton at $host (curl exit $?)" >&2; exit 2; }
if [[ $status != 200 ]]; then
  echo "error: HTTP $status: $(cat "$response")" >&2
  exit 1
fi

# the rows before the last are detections (sorted by score), the last the whole image (valid only when no detection is)
jq -r '
  (.outputs | map({key: .name, value: .data}) | from_entries) as $o
  | ($o.valid | length) as $rows
  | ($o.embeddings | length / $rows) as $dim
  | def r($n): (. * $n | round) / $n;
    "embedder_id \($o.embedder_id[0])",
    "valid \($o.valid | tojson)",
    (range(0; $rows) | select($o.valid[.]) as $i
     | "row \($i)\(if $i == $rows - 1 then " (whole image)" else "" end)"
       + " score=\($o.scores[$i] | r(10000))"
       + " box=\($o.boxes[4 * $i:4 * $i + 4] | map(r(1000)) | tojson)"
       + " category=\($o.category[$i] | tojson)"
       + " embedding[:4]=\($o.embeddings[$dim * $i:$dim * $i + 4] | map(r(10000)) | tojson)")
' "$response"
