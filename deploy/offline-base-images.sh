#!/usr/bin/env bash
# Creates the base images docker/Dockerfile builds from, for machines that
# cannot pull from a registry (CI here, air-gapped sites), so that the plain
#   docker-compose up -d --build      (or `docker compose up -d --build`)
# then works offline. With a registry this script is not needed.
#
#   deploy/offline-base-images.sh [--force]
#
# Builder image (the `RUST_IMAGE` default of docker/Dockerfile, e.g.
# rust:1.95.0-slim-bookworm), made from what this machine has:
#   - a Debian bookworm root filesystem made with debootstrap from the Debian
#     mirror of this host's apt sources (DEBIAN_MIRROR overrides it), with
#     the packages the official slim image has for a build: gcc, libc6-dev
#     (libc.a for +crt-static) and ca-certificates;
#   - this host's Rust toolchain of the same version (rustup's copy, without
#     its docs), laid out as in the official image: RUSTUP_HOME
#     /usr/local/rustup, CARGO_HOME /usr/local/cargo, rustup's proxies on
#     PATH.
# The final stage is `FROM scratch`, which needs no image.
#
# It also passes this host's CA trust store to the builder stage
# (docker/extra-ca/host-ca-certificates.crt, ignored by git), so cargo can
# fetch crates through a TLS-intercepting proxy this host trusts.
#
# Idempotent: an image that already exists is kept unless --force is given.
# The debootstrapped root filesystem is cached as a tarball in
# target/offline-base/ (about 2 minutes to make, seconds to reuse), also
# with --force (e.g. after a toolchain update); remove that directory to
# debootstrap again.
#
# Needs root (debootstrap), Docker, and apt-get or debootstrap installed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

force=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "offline-base-images: unknown argument $arg" >&2; exit 2 ;;
  esac
done

log() { echo "offline-base-images: $*" >&2; }
die() { log "$*"; exit 1; }

# --- the CA trust store, for the builder stage --------------------------
# Done before anything is skipped: a fresh clone with existing base images
# needs it too.
host_ca=/etc/ssl/certs/ca-certificates.crt
if [[ -s "$host_ca" ]]; then
  mkdir -p docker/extra-ca
  if ! cmp -s "$host_ca" docker/extra-ca/host-ca-certificates.crt; then
    cp -f "$host_ca" docker/extra-ca/host-ca-certificates.crt.tmp
    mv -f docker/extra-ca/host-ca-certificates.crt.tmp docker/extra-ca/host-ca-certificates.crt
    log "copied $host_ca to docker/extra-ca/host-ca-certificates.crt"
  fi
fi

# --- the image name, from the Dockerfile (one source of truth) ------------
image="$(sed -n 's/^ARG RUST_IMAGE=\(.*\)$/\1/p' docker/Dockerfile | head -n 1)"
[[ -n "$image" ]] || die "no 'ARG RUST_IMAGE=...' line in docker/Dockerfile"
# rust:1.95.0-slim-bookworm -> toolchain 1.95.0, suite bookworm
tag="${image##*:}"
version="${tag%%-*}"
suite="${tag##*-}"
[[ "$version" =~ ^[0-9]+\.[0-9]+(\.[0-9]+)?$ ]] || die "cannot read a Rust version from $image"
[[ "$suite" == bookworm ]] || die "only Debian bookworm builder images are made here, not $suite ($image)"

if ((!force)) && docker image inspect "$image" >/dev/null 2>&1; then
  log "$image exists (--force makes it again)"
  exit 0
fi

# --- the host's toolchain of that version ---------------------------------
arch="$(uname -m)"
triple="$arch-unknown-linux-gnu"
host_version() { "$1" --version 2>/dev/null | awk '{print $2}'; }
sysroot=""
rustup_bin=""
if command -v rustup >/dev/null; then
  rustup_bin="$(command -v rustup)"
  # A toolchain named after the version, else any whose rustc has it.
  for tc in "$version-$triple" $(rustup toolchain list 2>/dev/null | awk '{print $1}'); do
    s="$(RUSTUP_AUTO_INSTALL=0 rustup run "$tc" rustc --print sysroot 2>/dev/null)" || continue
    if [[ "$(host_version "$s/bin/rustc")" == "$version"* ]]; then
      sysroot="$s"
      break
    fi
  done
elif command -v rustc >/dev/null && [[ "$(host_version rustc)" == "$version"* ]]; then
  sysroot="$(rustc --print sysroot)"
fi
[[ -n "$sysroot" && -x "$sysroot/bin/cargo" ]] ||
  die "no Rust $version toolchain with cargo on this host (rustc --version: $(rustc --version 2>/dev/null || echo none)); install it or change RUST_IMAGE in docker/Dockerfile"
sysroot="$(cd "$sysroot" && pwd -P)"
full_version="$(host_version "$sysroot/bin/rustc")"
log "toolchain: $sysroot (rustc $full_version)"

# --- the Debian root filesystem (cached) ----------------------------------
packages=ca-certificates,gcc,libc6-dev
cache_dir="$root/target/offline-base"
rootfs_tar="$cache_dir/debian-$suite-$arch-minbase-${packages//,/-}.tar"
if [[ ! -s "$rootfs_tar" ]]; then
  if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; } ||
      die "cannot install debootstrap"
  fi
  mirror="${DEBIAN_MIRROR:-}"
  if [[ -z "$mirror" ]]; then
    # The host's own Debian mirror: deb822 sources first, then sources.list.
    mirror="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
      awk '/^URIs:/ {for (i = 2; i <= NF; i++) if ($i ~ /debian\/?$/) {print $i; exit}}')"
    [[ -n "$mirror" ]] || mirror="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
      awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^https?:.*debian\/?$/) {print $i; exit}}')"
  fi
  [[ -n "$mirror" ]] || die "no Debian mirror in this host's apt sources; set DEBIAN_MIRROR"
  mkdir -p "$cache_dir"
  work="$(mktemp -d "$cache_dir/rootfs.XXXXXX")"
  # Unmount anything debootstrap left mounted before removing its tree.
  cleanup_rootfs() {
    local m
    for m in proc sys dev/pts dev; do
      if mountpoint -q "$work/rootfs/$m" 2>/dev/null; then umount -l "$work/rootfs/$m" || true; fi
    done
    rm -rf "$work"
  }
  trap cleanup_rootfs EXIT
  log "debootstrap $suite ($arch, minbase + $packages) from $mirror"
  debootstrap --variant=minbase --include="$packages" "$suite" "$work/rootfs" "$mirror" \
    >"$work/debootstrap.log" 2>&1 || { tail -n 20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
  # Smaller image: no apt lists, package cache or docs.
  rm -rf "$work/rootfs"/var/lib/apt/lists/* "$work/rootfs"/var/cache/apt/*.bin \
    "$work/rootfs"/var/cache/apt/archives/*.deb "$work/rootfs"/usr/share/doc/* \
    "$work/rootfs"/usr/share/man/* "$work/rootfs"/usr/share/locale/*
  tar -C "$work/rootfs" --numeric-owner -cf "$rootfs_tar.tmp" .
  mv -f "$rootfs_tar.tmp" "$rootfs_tar"
  cleanup_rootfs
  trap - EXIT
  log "cached the root filesystem in ${rootfs_tar#"$root"/}"
else
  log "reusing ${rootfs_tar#"$root"/}"
fi

# --- builder image: root filesystem + toolchain ---------------------------
work="$(mktemp -d "$cache_dir/image.XXXXXX")"
trap 'rm -rf "$work" "$work.image.tar"' EXIT
toolchain="$version-$triple"
# A two-part tag (rust:1.95-...) names the toolchain by its full version.
if [[ "$version" =~ ^[0-9]+\.[0-9]+$ ]]; then toolchain="$full_version-$triple"; fi
tc_dir="$work/usr/local/rustup/toolchains/$toolchain"
mkdir -p "$tc_dir" "$work/usr/local/cargo/bin"
# The toolchain without its HTML docs and completions (share/: ~800 MB).
tar -C "$sysroot" -cf - --exclude=./share . | tar -C "$tc_dir" -xf -
if [[ -n "$rustup_bin" ]]; then
  cp "$rustup_bin" "$work/usr/local/cargo/bin/rustup"
  for proxy in cargo rustc rustdoc rust-gdb rust-lldb rustfmt cargo-fmt cargo-clippy clippy-driver; do
    if [[ -e "$tc_dir/bin/$proxy" ]]; then ln -s rustup "$work/usr/local/cargo/bin/$proxy"; fi
  done
  printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\n' "$toolchain" \
    >"$work/usr/local/rustup/settings.toml"
else
  for b in "$tc_dir"/bin/*; do ln -s "../../rustup/toolchains/$toolchain/bin/${b##*/}" "$work/usr/local/cargo/bin/"; done
fi
# One tarball for `docker import`: the root filesystem, then the toolchain
# (only the new directories: the daemon refuses a path given twice).
cp "$rootfs_tar" "$work.image.tar"
tar -C "$work" --numeric-owner --owner=0 --group=0 -rf "$work.image.tar" ./usr/local/rustup ./usr/local/cargo
log "docker import -> $image"
docker import \
  --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
  --change 'ENV CARGO_HOME=/usr/local/cargo' \
  --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change "ENV RUST_VERSION=$full_version" \
  --change 'CMD ["bash"]' \
  --message "offline stand-in for $image: Debian $suite (debootstrap) + the host's Rust $full_version" \
  "$work.image.tar" "$image" >/dev/null
rm -f "$work.image.tar"

# The image must do what the Dockerfile needs of it.
docker run --rm --network none "$image" sh -c 'cargo --version && rustc --version && cc --version | head -n 1 && test -f /usr/lib/'"$arch"'-linux-gnu/libc.a' >&2 ||
  die "$image was made but cargo, rustc, cc or libc.a does not work in it"
log "done: $(docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$image")"
