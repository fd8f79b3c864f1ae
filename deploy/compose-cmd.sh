# shellcheck shell=bash disable=SC2034
# Sourced by deploy/compose-up.sh and tests/docker/compose_faults.sh: sets the
# array `compose` to the compose command to use: $COMPOSE if set, else
# `docker compose` (v2) when present, else `docker-compose` (v1). Returns 1
# when there is none.
if [[ -n "${COMPOSE:-}" ]]; then
  read -r -a compose <<<"$COMPOSE"
elif docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null; then
  compose=(docker-compose)
else
  echo "neither 'docker compose' nor 'docker-compose' is installed" >&2
  return 1
fi
