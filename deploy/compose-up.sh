#!/usr/bin/env bash
# Builds ringcache's static binaries, stages them for the images and runs
# `compose up --build` on docker-compose.yml (one manager, three data nodes).
# Extra arguments go to `up`, e.g. `deploy/compose-up.sh -d`.
#
# No builder image can be pulled, so the images are `FROM scratch` with a
# fully static binary built here by cargo (glibc, +crt-static).
#
# Environment:
#   COMPOSE              compose command (default: `docker compose` when
#                        present, else `docker-compose`)
#   RINGCACHE_BIN_DIR    take the static `datanode` and `manager` from this
#                        directory instead of building them
#   CARGO_TARGET_DIR     cargo's target directory (default: target)
#   COMPOSE_PROJECT_NAME and the RINGCACHE_* port variables of
#   docker-compose.yml are passed on to compose.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

stage=target/docker-bin
bin_dir="${RINGCACHE_BIN_DIR:-}"
if [[ -z "$bin_dir" ]]; then
  triple="$(uname -m)-unknown-linux-gnu"
  echo "compose-up: building static binaries for $triple" >&2
  # --target keeps build scripts and proc macros dynamic; only the binaries
  # are static. No debug info: the images stay small (symbols are kept).
  RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
    CARGO_PROFILE_RELEASE_DEBUG=false \
    cargo build --release --target "$triple" --bin datanode --bin manager
  bin_dir="${CARGO_TARGET_DIR:-target}/$triple/release"
fi

mkdir -p "$stage"
for bin in datanode manager; do
  src="$bin_dir/$bin"
  if [[ ! -x "$src" ]]; then
    echo "compose-up: $src not found" >&2
    exit 1
  fi
  # A scratch image has no dynamic loader: refuse a dynamic binary here
  # rather than fail in the container with "no such file or directory".
  if command -v ldd >/dev/null && ! ldd "$src" 2>&1 | grep -qE 'statically linked|not a dynamic executable'; then
    echo "compose-up: $src is dynamically linked; build it with RUSTFLAGS='-C target-feature=+crt-static' and --target" >&2
    exit 1
  fi
  cp -f "$src" "$stage/$bin.tmp"
  mv -f "$stage/$bin.tmp" "$stage/$bin"
done

# shellcheck source=deploy/compose-cmd.sh
source "$root/deploy/compose-cmd.sh" || exit 1

echo "compose-up: ${compose[*]} up --build $*" >&2
exec "${compose[@]}" up --build "$@"
