#!/usr/bin/env bash
# Refresh requirements/lock.txt: every dependency of pyproject.toml plus the dev extra, pinned,
# with the SHA-256 of every file pip may install (pip then runs in --require-hashes mode).
#
#   scripts/lock.sh               re-resolve after editing pyproject.toml (`make lock`); pins that
#                                 still satisfy pyproject.toml are kept, new ones are added
#   scripts/lock.sh --upgrade     move every pin to the newest release pyproject.toml allows
#   scripts/lock.sh --check       exit 1 if the lock is not what pyproject.toml resolves to now
#                                 (a warning only when the index cannot be reached)
#
# The lock is resolved for CPython 3.11 on Linux x86_64 (the project's machines). There, torch
# comes from PyPI as its CUDA build with the nvidia-* runtime wheels; pip takes the same files
# from a local mirror when one is configured, so the hashes match either way.
# The resolver is uv, pinned and installed into $VENV/lock-tools (not into the project's venv);
# installing the lock needs only plain pip: see `make install`.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
LOCK=requirements/lock.txt
TOOLS="${VENV:-.venv}/lock-tools"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$TOOLS/bin/uv" ]; then
  "$PYTHON" -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install --quiet "uv==$UV_VERSION"
fi

compile() {  # compile OUTPUT [extra uv args]: OUTPUT's current pins are the preferred versions
  local out=$1
  shift
  "$TOOLS/bin/uv" pip compile pyproject.toml --extra dev --generate-hashes \
    --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    --custom-compile-command "make lock" --quiet -o "$out" "$@"
}

case "${1:-}" in
  --check)
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    cp "$LOCK" "$tmp/lock.txt"
    if ! compile "$tmp/lock.txt" 2>"$tmp/err"; then
      # No resolution (index unreachable, say): `make install` still refuses a stale lock
      # (pip check) and an incomplete one (--require-hashes), so this check only warns.
      cat "$tmp/err" >&2
      echo "warning: could not re-resolve $LOCK; not checked against pyproject.toml" >&2
      exit 0
    fi
    if ! diff -u "$LOCK" "$tmp/lock.txt" >"$tmp/diff"; then
      head -40 "$tmp/diff" >&2
      echo "$LOCK is out of date with pyproject.toml: run \`make lock\` and commit it" >&2
      exit 1
    fi
    echo "$LOCK is up to date"
    ;;
  --upgrade)
    compile "$LOCK" --upgrade
    ;;
  "")
    mkdir -p "$(dirname "$LOCK")"
    compile "$LOCK"
    ;;
  *)
    echo "usage: scripts/lock.sh [--check|--upgrade]" >&2
    exit 2
    ;;
esac
