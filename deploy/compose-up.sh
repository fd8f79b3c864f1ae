#!/usr/bin/env bash
# Runs `compose up --build` on docker-compose.yml (one manager, three data
# nodes) with whichever compose command this machine has. The images are
# built by docker/Dockerfile itself, so this is the same as typing
# `docker compose up --build` (or `docker-compose up --build`); it is kept
# for scripts that call it. Extra arguments go to `up`, e.g.
# `deploy/compose-up.sh -d`.
#
# Without a registry, run deploy/offline-base-images.sh once first.
#
# Environment:
#   COMPOSE              compose command (default: `docker compose` when
#                        present, else `docker-compose`)
#   COMPOSE_PROJECT_NAME and the RINGCACHE_* port variables of
#   docker-compose.yml are passed on to compose.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# shellcheck source=deploy/compose-cmd.sh
source "$root/deploy/compose-cmd.sh" || exit 1

echo "compose-up: ${compose[*]} up --build $*" >&2
exec "${compose[@]}" up --build "$@"
