#!/usr/bin/env bash
# Build Toxiproxy (Shopify's TCP proxy that injects latency, thin bandwidth,
# resets and timeouts), for tests that put a faulty link in front of a real
# receiver. Tests start a server of their own on 127.0.0.1 and drive it
# through its HTTP API (tests/common/toxiproxy.rs).
#
#   scripts/toxiproxy.sh bin    # build if needed (go install, ~10 s, cached), print the binary's path
#
# SPILLWAY_CACHE (~/.cache/spillway) can be overridden.
set -euo pipefail
version=2.5.0
cache=${SPILLWAY_CACHE:-$HOME/.cache/spillway}
dir=$cache/toxiproxy-$version
bin=$dir/server

case "${1:-}" in
  bin)
    if [ ! -x "$bin" ]; then
      mkdir -p "$dir"
      echo "toxiproxy.sh: building Toxiproxy $version (once)" >&2
      GOBIN="$dir" go install "github.com/Shopify/toxiproxy/v2/cmd/server@v$version" >&2
    fi
    echo "$bin"
    ;;
  *)
    echo "usage: $0 bin" >&2
    exit 2
    ;;
esac
