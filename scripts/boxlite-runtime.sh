#!/bin/bash
# boxlite-runtime.sh - the BoxLite 0.10.8 runtime files (boxlite-shim, boxlite-guest, libkrunfw,
# bwrap, mke2fs, ...) without GitHub: from the PyPI wheel `boxlite==0.10.8`, which embeds them and
# extracts them the first time a runtime is constructed. See docs/BOXLITE.md.
#
# Usage:  scripts/boxlite-runtime.sh            # prints the env to build with the feature
#         eval "$(scripts/boxlite-runtime.sh)"   # ... and sets it in this shell
#         cargo build --workspace --features blink-server/boxlite,blink-cli/boxlite
# Output (stdout): BOXLITE_RUNTIME_URL (file:// tarball, baked in by boxlite's build.rs),
#                  BOXLITE_RUNTIME_DIR (the extracted directory, for BOXLITE_DEPS_STUB=1 builds).
# Cache: target/boxlite-runtime/ (wheel, venv, runtime/, the tarball). Idempotent.
# Needs: python3 (>= 3.10) with venv and pip, network access to PyPI on the first run; protoc
#        (Debian protobuf-compiler) for the cargo build itself.
set -euo pipefail

VERSION=0.10.8
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${BOXLITE_CACHE:-$ROOT/target/boxlite-runtime}
TARBALL=$CACHE/boxlite-runtime-v$VERSION-linux-x64-gnu.tar.gz
log() { echo "[boxlite-runtime] $*" >&2; }

mkdir -p "$CACHE"
if [ ! -f "$CACHE/runtime/.complete" ]; then
  if ! ls "$CACHE"/wheel/boxlite-$VERSION-*.whl >/dev/null 2>&1; then
    log "pip download boxlite==$VERSION"
    python3 -m pip download -q --no-deps --only-binary=:all: "boxlite==$VERSION" -d "$CACHE/wheel" >&2
  fi
  if [ ! -x "$CACHE/venv/bin/python" ]; then
    log "venv + wheel"
    python3 -m venv "$CACHE/venv" >&2
    "$CACHE/venv/bin/pip" install -q --no-index --no-deps "$CACHE"/wheel/boxlite-$VERSION-*.whl >&2
  fi
  # Constructing a runtime extracts the embedded files under $XDG_DATA_HOME/boxlite/runtimes/.
  log "extract the runtime files"
  rm -rf "$CACHE/xdg" "$CACHE/home"
  XDG_DATA_HOME="$CACHE/xdg" "$CACHE/venv/bin/python" - "$CACHE/home" >&2 <<'PY'
import sys, boxlite
boxlite.Boxlite(boxlite.Options(home_dir=sys.argv[1]))
PY
  extracted=$(find "$CACHE/xdg" "$CACHE/home" -type f -name .complete -path "*v$VERSION*" -printf '%h\n' 2>/dev/null | head -1)
  if [ -z "$extracted" ]; then
    log "no extracted runtime found under $CACHE/xdg or $CACHE/home"
    exit 1
  fi
  rm -rf "$CACHE/runtime.tmp"
  cp -a "$extracted" "$CACHE/runtime.tmp"
  for f in boxlite-shim boxlite-guest; do
    [ -f "$CACHE/runtime.tmp/$f" ] || { log "runtime lacks $f"; exit 1; }
  done
  rm -rf "$CACHE/runtime"
  mv "$CACHE/runtime.tmp" "$CACHE/runtime"
  rm -f "$TARBALL"
fi
if [ ! -f "$TARBALL" ]; then
  # One top-level directory holding the files flat: boxlite's build.rs extracts with
  # --strip-components=1.
  log "tarball $TARBALL"
  tar -C "$CACHE" --transform "s,^runtime,boxlite-runtime-v$VERSION," -czf "$TARBALL.tmp" runtime
  mv "$TARBALL.tmp" "$TARBALL"
fi
echo "export BOXLITE_RUNTIME_URL=file://$TARBALL"
echo "export BOXLITE_RUNTIME_DIR=$CACHE/runtime"
