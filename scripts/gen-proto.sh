#!/usr/bin/env bash
# gen-proto.sh [--check] — regenerate common/gen/ from proto/ with buf (binary from the npm
# registry) and ts-proto. Generated code is checked in; --check regenerates into a temp dir and
# fails when it differs from what is committed (the drift check CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
BUF=./node_modules/.bin/buf
if [ "${1:-}" = --check ]; then
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  "$BUF" generate --template buf.gen.yaml -o "$tmp"
  if ! diff -r "$tmp/common/gen" common/gen >/dev/null; then
    diff -ru common/gen "$tmp/common/gen" | head -40
    echo "common/gen is out of date with proto/: run 'npm run gen:proto' and commit the result" >&2
    exit 1
  fi
  echo "common/gen matches proto/"
else
  rm -rf common/gen
  "$BUF" generate --template buf.gen.yaml
  echo "generated common/gen from proto/"
fi
