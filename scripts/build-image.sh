#!/usr/bin/env bash
# Build the fleetinfer container image (deploy/docker/Dockerfile) on a machine where no registry
# serves base images:
#   1. start dockerd (Debian's docker.io) when no daemon answers;
#   2. make the two base images from Debian packages: debootstrap a bookworm minbase with python3
#      (runtime), and a copy of it with a compiler and python3-dev added (build); each root file
#      system is cached as a tarball under .cache/image/ (gitignored), so a rebuild skips this step;
#      `docker import` them as fleetinfer-base:bookworm-{runtime,build}-ARCH;
#   3. build the image with BuildKit, passing the host's CA bundle to pip as a build secret (mounted
#      at /run/secrets/cabundle on the install step only, never written into a layer).
#
# usage: scripts/build-image.sh [--platform linux/amd64|linux/arm64] [--tag NAME:TAG]
#            [--extras redis,sqs,postgresql] [--roadchange] [--models DIR] [--no-cache]
# Every option has a default: `make image` runs it with none.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE="$ROOT/.cache/image"
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
RUNTIME_PACKAGES=python3,ca-certificates
BUILD_PACKAGES="gcc libc6-dev python3-dev python3-venv"
CA_BUNDLE=${CA_BUNDLE:-}
BASE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

platform=""
tag="fleetinfer:latest"
extras="redis,sqs,postgresql"
roadchange=0
models="deploy/docker/models"
no_cache=()

die() { echo "build-image: $*" >&2; exit 2; }
say() { echo "build-image: $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --platform) platform=${2:?--platform needs linux/amd64 or linux/arm64}; shift 2 ;;
    --tag) tag=${2:?--tag needs NAME:TAG}; shift 2 ;;
    --extras) extras=${2?--extras needs a comma list (may be empty)}; shift 2 ;;
    --roadchange) roadchange=1; shift ;;
    --models) models=${2:?--models needs a folder inside the repository}; shift 2 ;;
    --no-cache) no_cache=(--no-cache); shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) die "unknown option '$1' (expected --platform, --tag, --extras, --roadchange, --models, --no-cache)" ;;
  esac
done

host_arch=$(dpkg --print-architecture)
arch=${platform#linux/}
arch=${arch:-$host_arch}
case "$arch" in
  amd64|arm64) ;;
  *) die "platform 'linux/$arch' is not built (expected linux/amd64 or linux/arm64)" ;;
esac
platform="linux/$arch"
case "$models" in /*) die "--models '$models' must be a folder inside the repository (the build context)" ;; esac
[ -d "$ROOT/$models" ] || die "--models folder '$models' does not exist under $ROOT"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# --- 1. a daemon -----------------------------------------------------------------------------
ensure_dockerd() {
  if docker info >/dev/null 2>&1; then return; fi
  command -v dockerd >/dev/null || die "no container engine: dockerd is missing (apt-get install docker.io)"
  say "starting dockerd (log: /tmp/fleetinfer-docker/dockerd.log)"
  mkdir -p /tmp/fleetinfer-docker
  as_root bash -c 'nohup dockerd >/tmp/fleetinfer-docker/dockerd.log 2>&1 &'
  for _ in $(seq 100); do docker info >/dev/null 2>&1 && return; sleep 0.2; done
  die "dockerd did not answer within 20 s (see /tmp/fleetinfer-docker/dockerd.log)"
}

# BuildKit: `docker buildx build --load` when the buildx plugin is there; otherwise a client older
# than 23 (Debian's docker.io, /usr/bin/docker) still runs BuildKit itself with DOCKER_BUILDKIT=1.
pick_builder() {
  local c
  for c in docker /usr/bin/docker; do
    command -v "$c" >/dev/null || continue
    if "$c" buildx version >/dev/null 2>&1; then BUILD=("$c" buildx build --load); return; fi
    local major
    major=$("$c" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1 || true)
    if [ -n "$major" ] && [ "$major" -lt 23 ]; then BUILD=(env DOCKER_BUILDKIT=1 "$c" build); return; fi
  done
  die "no BuildKit client: install docker-buildx, or use Debian's docker.io client (/usr/bin/docker)"
}

# --- 2. base images from Debian packages -----------------------------------------------------
ensure_qemu() {
  [ "$arch" = "$host_arch" ] && return
  local q=aarch64
  [ "$arch" = amd64 ] && q=x86_64
  [ -e "/proc/sys/fs/binfmt_misc/qemu-$q" ] && return
  if command -v update-binfmts >/dev/null && [ -e "/usr/bin/qemu-$q-static" ]; then
    say "registering qemu-$q with binfmt_misc"
    [ -e /proc/sys/fs/binfmt_misc/register ] \
      || as_root mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || true
    as_root update-binfmts --enable "qemu-$q" >/dev/null 2>&1 || true
    [ -e "/proc/sys/fs/binfmt_misc/qemu-$q" ] && return
  fi
  die "building linux/$arch on $host_arch needs qemu-user-static and binfmt-support (apt-get install qemu-user-static binfmt-support), and /proc/sys/fs/binfmt_misc/qemu-$q registered"
}

make_rootfs_tarballs() {
  local key runtime_tar build_tar
  key=$(echo "$SUITE $RUNTIME_PACKAGES $BUILD_PACKAGES" | sha256sum | cut -c1-12)
  runtime_tar="$CACHE/$SUITE-$arch-runtime-$key.tar"
  build_tar="$CACHE/$SUITE-$arch-build-$key.tar"
  if [ -s "$runtime_tar" ] && [ -s "$build_tar" ]; then
    say "base root file systems cached: $runtime_tar"
  else
    command -v debootstrap >/dev/null || die "debootstrap is missing (apt-get install debootstrap)"
    mkdir -p "$CACHE"
    local dir
    dir=$(mktemp -d "${TMPDIR:-/tmp}/fleetinfer-rootfs-$arch.XXXXXX")  # not under the repository
    say "debootstrap $SUITE ($arch, minbase + $RUNTIME_PACKAGES) from $MIRROR"
    as_root debootstrap --variant=minbase --arch="$arch" --include="$RUNTIME_PACKAGES" \
      "$SUITE" "$dir" "$MIRROR" >"$CACHE/debootstrap-$arch.log" 2>&1 \
      || die "debootstrap failed (see $CACHE/debootstrap-$arch.log)"
    as_root chroot "$dir" apt-get clean
    as_root rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin "$dir"/usr/share/doc/* \
      "$dir"/usr/share/man/* "$dir"/usr/share/info/* "$dir"/usr/share/locale/*
    as_root tar -C "$dir" --numeric-owner -cf "$runtime_tar.part" . && mv "$runtime_tar.part" "$runtime_tar"
    say "adding $BUILD_PACKAGES for the build stage"
    as_root cp /etc/resolv.conf "$dir/etc/resolv.conf"
    as_root mount -t proc proc "$dir/proc"
    if ! as_root chroot "$dir" bash -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $BUILD_PACKAGES && apt-get clean" \
      >"$CACHE/build-packages-$arch.log" 2>&1; then
      as_root umount "$dir/proc"
      die "installing the build packages failed (see $CACHE/build-packages-$arch.log)"
    fi
    as_root umount "$dir/proc"
    as_root rm -rf "$dir"/var/lib/apt/lists/*
    as_root tar -C "$dir" --numeric-owner -cf "$build_tar.part" . && mv "$build_tar.part" "$build_tar"
    as_root rm -rf "$dir"
  fi
  BASE_RUNTIME="fleetinfer-base:$SUITE-runtime-$arch-$key"
  BASE_BUILD="fleetinfer-base:$SUITE-build-$arch-$key"
  import_once "$runtime_tar" "$BASE_RUNTIME"
  import_once "$build_tar" "$BASE_BUILD"
}

import_once() {
  local tar=$1 image=$2
  if docker image inspect "$image" >/dev/null 2>&1; then return; fi
  if [ "$arch" = "$host_arch" ]; then
    say "docker import $tar as $image"
    docker import --change "ENV PATH=$BASE_PATH" --change 'CMD ["/bin/bash"]' "$tar" "$image" >/dev/null
    return
  fi
  # docker import records this machine's architecture (its --platform needs an experimental
  # daemon), and BuildKit then looks for the base in a registry: build it FROM scratch instead
  say "importing $tar as $image ($platform, FROM scratch + ADD)"
  local dir
  dir=$(mktemp -d)
  ln "$tar" "$dir/rootfs.tar" 2>/dev/null || cp "$tar" "$dir/rootfs.tar"
  printf 'FROM scratch\nADD rootfs.tar /\nENV PATH=%s\nCMD ["/bin/bash"]\n' "$BASE_PATH" >"$dir/Dockerfile"
  "${BUILD[@]}" -q --platform "$platform" -t "$image" "$dir" >/dev/null
  rm -rf "$dir"
}

# --- 3. the image ----------------------------------------------------------------------------
find_ca_bundle() {
  local c
  for c in "$CA_BUNDLE" "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt; do
    if [ -n "$c" ] && [ -s "$c" ]; then echo "$c"; return; fi
  done
}

ensure_dockerd
pick_builder
ensure_qemu
make_rootfs_tarballs

secret=()
ca=$(find_ca_bundle)
if [ -n "$ca" ]; then
  secret=(--secret "id=cabundle,src=$ca")
  say "pip trusts $ca during the build (a BuildKit secret: not kept in the image)"
fi

# the Dockerfile and its ignore file (BuildKit reads <Dockerfile>.dockerignore) from a temporary
# folder, the ignore file letting the models folder in
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dockerfile="$work/Dockerfile"
cp "$ROOT/deploy/docker/Dockerfile" "$dockerfile"
{ cat "$ROOT/deploy/docker/Dockerfile.dockerignore"; echo "!${models%/}"; } >"$dockerfile.dockerignore"

say "building $tag for $platform (extras: ${extras:-none}, roadchange: $roadchange, models: $models)"
start=$(date +%s)
"${BUILD[@]}" "${no_cache[@]}" --network host --platform "$platform" "${secret[@]}" \
  --build-arg "BASE_RUNTIME=$BASE_RUNTIME" --build-arg "BASE_BUILD=$BASE_BUILD" \
  --build-arg "EXTRAS=$extras" --build-arg "WITH_ROADCHANGE=$roadchange" \
  --build-arg "MODELS=$models" \
  -f "$dockerfile" -t "$tag" "$ROOT"
# the images this tag had before are dangling now: remove them (only this image's, by its label)
docker image prune -f --filter "label=org.opencontainers.image.title=fleetinfer" >/dev/null
size=$(docker image inspect --format '{{.Size}}' "$tag")
say "built $tag ($platform) in $(( $(date +%s) - start )) s: $size bytes ($(( size / 1000000 )) MB)"
