#!/bin/sh
# The container's entry point: on first start make the default image, then
# run blink-server in the foreground with the given flags.
set -eu
if ! blink-cli image ls --json | grep -q '"reference"'; then
  blink-cli image build
fi
if [ -z "${BLINK_API_TOKEN:-}" ]; then
  echo "blink: BLINK_API_TOKEN is not set: the REST API on 0.0.0.0:8787 is open to anyone who reaches it" >&2
fi
exec blink-server "$@"
