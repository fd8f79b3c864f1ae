#!/usr/bin/env bash
# Creates the images docker-compose.yml needs from a registry, for machines
# that cannot pull from one (CI here, air-gapped sites), so that the plain
#   docker-compose up -d --build      (or `docker compose up -d --build`)
# then works offline. With a registry this script is not needed.
#
#   deploy/offline-base-images.sh [--force]
#
# 1. Builder image (the `RUST_IMAGE` default of docker/Dockerfile, e.g.
# rust:1.95.0-slim-bookworm), made from what this machine has:
#   - a Debian bookworm root filesystem made with debootstrap from the Debian
#     mirror of this host's apt sources (DEBIAN_MIRROR overrides it), with
#     the packages the official slim image has for a build: gcc, libc6-dev
#     (libc.a for +crt-static) and ca-certificates;
#   - this host's Rust toolchain of the same version (rustup's copy, without
#     its docs), laid out as in the official image: RUSTUP_HOME
#     /usr/local/rustup, CARGO_HOME /usr/local/cargo, rustup's proxies on
#     PATH.
# The final stages are `FROM scratch`, which needs no image.
#
# 2. etcd image (the `image:` of the etcd service in docker-compose.yml,
# e.g. gcr.io/etcd-development/etcd:v3.4.23): a Debian bookworm root
# filesystem (debootstrap, as above) with Debian's etcd-server and
# etcd-client packages, laid out as the upstream image: /usr/local/bin/etcd
# and /usr/local/bin/etcdctl, CMD ["/usr/local/bin/etcd"], ports 2379 and
# 2380, flags given as arguments or ETCD_* variables as upstream. The tag
# must be the version Debian ships (checked: `etcd --version` in the image).
#
# It also passes this host's CA trust store to the builder stage
# (docker/extra-ca/host-ca-certificates.crt, ignored by git), so cargo can
# fetch crates through a TLS-intercepting proxy this host trusts.
#
# Idempotent: an image that already exists is kept unless --force is given.
# The debootstrapped root filesystems are cached as tarballs in
# target/offline-base/ (about 2 minutes each to make, seconds to reuse),
# also with --force (e.g. after a toolchain update); remove that directory
# to debootstrap again.
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

# --- Debian root filesystems (cached) -------------------------------------
cache_dir="$root/target/offline-base"
arch="$(uname -m)"
# rootfs_tar SUITE PACKAGES: sets rootfs_path to a tarball of a minbase
# Debian SUITE root filesystem with PACKAGES (comma-separated), made with
# debootstrap unless cached.
rootfs_path=""
rootfs_tar() {
  local suite="$1" packages="$2" tar_path mirror
  tar_path="$cache_dir/debian-$suite-$arch-minbase-${packages//,/-}.tar"
  if [[ -s "$tar_path" ]]; then
    log "reusing ${tar_path#"$root"/}"
    rootfs_path="$tar_path"
    return 0
  fi
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
  rootfs_work="$(mktemp -d "$cache_dir/rootfs.XXXXXX")"
  trap cleanup_rootfs EXIT
  log "debootstrap $suite ($arch, minbase + $packages) from $mirror"
  debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs_work/rootfs" "$mirror" \
    >"$rootfs_work/debootstrap.log" 2>&1 || { tail -n 20 "$rootfs_work/debootstrap.log" >&2; die "debootstrap failed"; }
  # Smaller image: no apt lists, package cache or docs.
  rm -rf "$rootfs_work/rootfs"/var/lib/apt/lists/* "$rootfs_work/rootfs"/var/cache/apt/*.bin \
    "$rootfs_work/rootfs"/var/cache/apt/archives/*.deb "$rootfs_work/rootfs"/usr/share/doc/* \
    "$rootfs_work/rootfs"/usr/share/man/* "$rootfs_work/rootfs"/usr/share/locale/*
  tar -C "$rootfs_work/rootfs" --numeric-owner -cf "$tar_path.tmp" .
  mv -f "$tar_path.tmp" "$tar_path"
  cleanup_rootfs
  trap - EXIT
  log "cached the root filesystem in ${tar_path#"$root"/}"
  rootfs_path="$tar_path"
}
rootfs_work=""
# Unmount anything debootstrap left mounted before removing its tree.
cleanup_rootfs() {
  local m
  [[ -n "$rootfs_work" ]] || return 0
  for m in proc sys dev/pts dev; do
    if mountpoint -q "$rootfs_work/rootfs/$m" 2>/dev/null; then umount -l "$rootfs_work/rootfs/$m" || true; fi
  done
  rm -rf "$rootfs_work"
  rootfs_work=""
}

# --- 1. builder image: root filesystem + toolchain ------------------------
builder_image() {
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
    return 0
  fi

  # --- the host's toolchain of that version ---------------------------------
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

  rootfs_tar "$suite" ca-certificates,gcc,libc6-dev
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
  cp "$rootfs_path" "$work.image.tar"
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
  rm -rf "$work"
  trap - EXIT
}

# --- 2. etcd image: Debian's etcd-server, laid out as upstream -------------
etcd_image() {
  # The name, from the etcd service of docker-compose.yml (one source of
  # truth; deploy/k8s/etcd.yaml names the same image).
  image="$(awk '/^  etcd:/ {in_etcd = 1; next} /^  [^ #]/ {in_etcd = 0}
    in_etcd && $1 == "image:" {print $2; exit}' docker-compose.yml)"
  [[ -n "$image" ]] || die "no image: line in the etcd service of docker-compose.yml"
  # gcr.io/etcd-development/etcd:v3.4.23 -> 3.4.23
  version="${image##*:v}"
  [[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "cannot read an etcd version from $image"
  if ((!force)) && docker image inspect "$image" >/dev/null 2>&1; then
    log "$image exists (--force makes it again)"
    return 0
  fi

  rootfs_tar bookworm ca-certificates,etcd-server,etcd-client
  work="$(mktemp -d "$cache_dir/image.XXXXXX")"
  trap 'rm -rf "$work" "$work.image.tar"' EXIT
  # Upstream's layout: the binaries in /usr/local/bin (Debian's are in
  # /usr/bin), /var/etcd and /var/lib/etcd present, etcd as the command.
  mkdir -p "$work/usr/local/bin" "$work/var/etcd"
  ln -s /usr/bin/etcd "$work/usr/local/bin/etcd"
  ln -s /usr/bin/etcdctl "$work/usr/local/bin/etcdctl"
  # Debian's package makes an etcd user and /var/lib/etcd owned by it;
  # upstream runs as root with /var/lib/etcd root's.
  cp "$rootfs_path" "$work.image.tar"
  tar -C "$work" --numeric-owner --owner=0 --group=0 -rf "$work.image.tar" ./usr/local/bin/etcd ./usr/local/bin/etcdctl ./var/etcd
  log "docker import -> $image"
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'EXPOSE 2379 2380' \
    --change 'CMD ["/usr/local/bin/etcd"]' \
    --message "offline stand-in for $image: Debian bookworm (debootstrap) + etcd-server, etcd-client" \
    "$work.image.tar" "$image" >/dev/null
  rm -f "$work.image.tar"

  # The image must run the version its tag names, and serve.
  got="$(docker run --rm --network none "$image" /usr/local/bin/etcd --version | sed -n 's/^etcd Version: //p')"
  [[ "$got" == "$version" ]] ||
    die "$image runs etcd ${got:-(none)}, not $version: Debian ships another etcd; change the tag in docker-compose.yml and deploy/k8s/etcd.yaml to match"
  docker run --rm --network none "$image" sh -c '
    etcd --data-dir /tmp/e >/tmp/etcd.log 2>&1 &
    for i in $(seq 50); do
      etcdctl --endpoints=http://127.0.0.1:2379 put k v >/dev/null 2>&1 && exec etcdctl --endpoints=http://127.0.0.1:2379 get --print-value-only k
      sleep 0.2
    done
    cat /tmp/etcd.log; exit 1' | grep -qx v ||
    die "$image was made but etcd does not serve in it"
  log "done: $(docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$image") (etcd $got)"
  rm -rf "$work"
  trap - EXIT
}

builder_image
etcd_image
