#!/usr/bin/env bash
# Builds the cluster tier's container images without a registry or a daemon: Debian's
# buildah, a Debian base made by debootstrap, and local wheelhouses of pinned wheels.
#
#   hack/images/build.sh [--import] [IMAGE...]      (default IMAGE: operator trainjob)
#
#   base              debootstrap --variant=minbase bookworm + python3, venv, wget, CA certs
#   python-base       base + hack/images/python-base.Dockerfile (stand-in: python:3.11-slim)
#   ray-base          base + hack/images/ray-base.Dockerfile (stand-in: rayproject/ray CPU)
#                     + the trainjob's dependency layer (hack/images/trainjob-cpu.lock)
#   operator          docker/operator.Dockerfile on python-base, offline from a wheelhouse
#   trainjob          docker/trainjob.Dockerfile on ray-base, offline
#   kuberay-operator  the static KubeRay operator binary on scratch (hack/build-controlplane.sh cluster)
#   pause             the static pod sandbox binary on scratch (hack/pause)
#   kueue             the static Kueue controller manager on scratch (hack/build-kueue.sh)
#
# Every image is cached as $ANYTASKTUNE_CACHE/images/<image>-<key>.oci.tar, where <key>
# hashes its inputs (Dockerfile, lock, source tree, build arguments, the parent's key),
# and tagged localhost/anytasktune/<image>:<key>: a warm run with unchanged inputs builds
# nothing. Wheelhouses are cached per lock under $ANYTASKTUNE_CACHE/images/wheels/.
# The current references are written to $ANYTASKTUNE_CACHE/images/refs.env.
# --import also imports them into the cluster's containerd when `make cluster` is up,
# skipping those already there.
# ANYTASKTUNE_IMAGE_SOURCE=DIR builds operator/trainjob from DIR (a checkout or `git archive`
# holding docker/, contract/, operator/, trainjob/) instead of this working tree.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="${ANYTASKTUNE_CACHE:-$HOME/.cache/anytasktune}"
out="$cache/images"
wheels="$out/wheels"
storage="$out/storage"              # buildah's image store (ours, not /var/lib/containers)
runroot="/run/anytasktune-buildah"  # buildah's run state
refs_file="$out/refs.env"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
py="${PYTHON_FOR_WHEELS:-$root/.venv/bin/python}"   # downloads/builds wheels on the host
src="$(cd "${ANYTASKTUNE_IMAGE_SOURCE:-$root}" && pwd)"  # Dockerfiles and build context
registry=localhost/anytasktune

log() { printf '[images] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

do_import=0
images=()
for a in "$@"; do
  case "$a" in
    --import) do_import=1 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) images+=("$a") ;;
  esac
done
((${#images[@]})) || images=(operator trainjob)

[[ $(id -u) == 0 ]] || die "needs root (buildah's overlay storage and RUN containers)"
bash "$root/hack/cluster/install-deps.sh"
mkdir -p "$out" "$wheels" "$storage"
# One build at a time (buildah's store, the archives); then buildah's run state holds
# nothing once we are done (no container stays mounted) and goes.
exec 9>"$out/.lock"
flock 9
# buildah writes each layer to a temporary file before compressing it (GBs for the
# trainjob's dependency layer): keep those in our cache folder, gone at exit.
export TMPDIR="$out/tmp"
rm -rf "$TMPDIR"; mkdir -p "$TMPDIR"
trap 'rm -rf "$runroot" "$TMPDIR"' EXIT

B() { buildah --root "$storage" --runroot "$runroot" --storage-driver overlay "$@"; }
# Working containers of an interrupted build hold GBs; none is in use under the lock.
B rm --all >/dev/null 2>&1 || true

sha() { sha256sum | cut -c1-16; }
# A hash of the files under some folders of the repository, as a build context sees them
# (no caches, no egg-info, no build folders).
tree_hash() {
  (cd "$src" && find "$@" \( -name __pycache__ -o -name '*.egg-info' -o -name build \) -prune \
     -o -type f ! -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha
}

declare -A KEY REF
timings=()

archive_of() { echo "$out/$1-${KEY[$1]}.oci.tar"; }

# Make REF[$1] present in buildah's store (it may have been built on an earlier run).
ensure_in_store() {
  local name=$1 id
  B inspect --type image "${REF[$name]}" >/dev/null 2>&1 && return 0
  log "loading ${REF[$name]} from $(archive_of "$name")"
  id="$(B pull -q "oci-archive:$(archive_of "$name")")"
  B tag "$id" "${REF[$name]}"
}

# Archive a freshly built image; drop older archives and tags of the same image.
finish() {
  local name=$1 t0=$2 archive old size
  archive="$(archive_of "$name")"
  # zstd: several times faster than gzip on the 5 GB dependency layer, to write and to
  # unpack (containerd >= 1.5 reads it).
  B push -q --compression-format zstd "${REF[$name]}" "oci-archive:$archive.tmp:${REF[$name]}"
  mv -f "$archive.tmp" "$archive"
  for old in "$out/$name"-*.oci.tar; do
    [[ "$old" == "$archive" ]] || rm -f "$old"
  done
  while read -r old; do
    [[ -n "$old" && "$old" != "${REF[$name]}" ]] && B rmi -f "$old" >/dev/null 2>&1 || true
  done < <(B images --format '{{.Name}}:{{.Tag}}' --filter "reference=$registry/$name" 2>/dev/null)
  size="$(du -m "$archive" | cut -f1)"
  timings+=("$name built in $(( $(date +%s) - t0 ))s, $size MiB")
  log "built ${REF[$name]} in $(( $(date +%s) - t0 ))s ($size MiB archive)"
}

fresh() { [[ -s "$(archive_of "$1")" ]]; }

# --------------------------------------------------------------------- the images
key_base() {
  KEY[base]="$(printf 'bookworm minbase python3,python3-venv,wget,ca-certificates %s v1' "$mirror" | sha)"
}
build_base() {
  local t0 work ctr
  t0=$(date +%s)
  work="$(mktemp -d "$out/.base.XXXXXX")"
  log "debootstrap --variant=minbase bookworm (python3, venv, wget, CA certificates) from $mirror"
  debootstrap --variant=minbase --include=python3,python3-venv,wget,ca-certificates \
    bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed (log: $work/debootstrap.log)"; }
  rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*
  tar -C "$work/rootfs" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' \
      --exclude='./sys/*' -cf "$work/rootfs.tar" .
  ctr="$(B from scratch)"
  B add "$ctr" "$work/rootfs.tar" / >/dev/null
  B config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
           --env LANG=C.UTF-8 --cmd bash "$ctr"
  B commit -q --rm "$ctr" "${REF[base]}" >/dev/null
  rm -rf "$work"
  finish base "$t0"
}

# wheelhouse <lock name>: sets WH to a folder holding exactly the lock's wheels (+ the lock).
wheelhouse() {
  local lock="$here/$1.lock" dir t0
  python3 "$here/lock.py" --if-stale "$1"
  dir="$wheels/$1-$(sha <"$lock")"
  if [[ ! -e "$dir/.complete" ]]; then
    t0=$(date +%s)
    log "downloading the wheels of $1.lock into $dir"
    rm -rf "$dir.tmp"; mkdir -p "$dir.tmp"
    # pip wheel: wheels from PyPI as they are; an sdist-only package (DeepSpeed) is built
    # into a wheel here, with this venv's torch (hence no build isolation).
    "$py" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$dir.tmp" --requirement "$lock"
    cp "$lock" "$dir.tmp/requirements.lock"
    touch "$dir.tmp/.complete"
    rm -rf "$dir"; mv "$dir.tmp" "$dir"
    for old in "$wheels/$1"-*; do [[ "$old" == "$dir" ]] || rm -rf "$old"; done
    timings+=("wheels of $1.lock in $(( $(date +%s) - t0 ))s, $(du -sm "$dir" | cut -f1) MiB")
  fi
  WH="$dir"
}

# bud <image> <parent> <Dockerfile> <context> [buildah bud options...]
bud() {
  local name=$1 parent=$2 dockerfile=$3 context=$4 t0
  shift 4
  t0=$(date +%s)
  ensure_in_store "$parent"
  log "building ${REF[$name]} from $dockerfile (context $context)"
  B bud --quiet --pull=never --format oci --layers=false --force-rm -f "$dockerfile" -t "${REF[$name]}" "$@" "$context" >&2
  finish "$name" "$t0"
}

key_python_base() { KEY[python-base]="$(cat "$here/python-base.Dockerfile" <(echo "${KEY[base]}") | sha)"; }
build_python_base() {
  bud python-base base "$here/python-base.Dockerfile" "$here" --network none \
    --build-arg "BASE_IMAGE=${REF[base]}"
}

key_ray_base() {
  python3 "$here/lock.py" --if-stale trainjob-cpu
  KEY[ray-base]="$(cat "$here/ray-base.Dockerfile" "$here/trainjob-cpu.lock" <(echo "${KEY[base]}") | sha)"
}
build_ray_base() {
  wheelhouse trainjob-cpu
  # network: apt-get of g++ and the Python headers (Debian's mirror); pip is offline.
  bud ray-base base "$here/ray-base.Dockerfile" "$here" --network host \
    --volume "$WH:/wheelhouse:ro" --build-arg "BASE_IMAGE=${REF[base]}"
}

key_operator() {
  python3 "$here/lock.py" --if-stale operator
  KEY[operator]="$(cat "$src/docker/operator.Dockerfile" "$src/docker/operator.Dockerfile.dockerignore" \
    "$here/operator.lock" <(tree_hash contract operator) <(echo "${KEY[python-base]}") | sha)"
}
build_operator() {
  wheelhouse operator
  bud operator python-base "$src/docker/operator.Dockerfile" "$src" --network none \
    --ignorefile "$src/docker/operator.Dockerfile.dockerignore" --volume "$WH:/wheelhouse:ro" \
    --build-arg "PYTHON_IMAGE=${REF[python-base]}" \
    --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheelhouse
}

key_trainjob() {
  KEY[trainjob]="$(cat "$src/docker/trainjob.Dockerfile" "$src/docker/trainjob.Dockerfile.dockerignore" \
    <(tree_hash contract trainjob) <(echo "${KEY[ray-base]}") | sha)"
}
build_trainjob() {
  wheelhouse trainjob-cpu
  bud trainjob ray-base "$src/docker/trainjob.Dockerfile" "$src" --network none \
    --ignorefile "$src/docker/trainjob.Dockerfile.dockerignore" --volume "$WH:/wheelhouse:ro" \
    --build-arg "RAY_IMAGE=${REF[ray-base]}" \
    --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheelhouse --build-arg PIP_NO_DEPS=1 --build-arg TRAINJOB_EXTRAS=
}

# static <image> <binary in $cache/bin> <path in image> <user>: one binary on scratch.
static_key() { KEY[$1]="$(cat "$cache/bin/$2" <(echo "$3 $4 v1") | sha)"; }
static_build() {
  local name=$1 binary=$2 path=$3 user=$4 t0 ctr
  t0=$(date +%s)
  ctr="$(B from scratch)"
  B copy --chmod 0755 "$ctr" "$cache/bin/$binary" "$path" >/dev/null
  B config --entrypoint "[\"$path\"]" --user "$user" "$ctr"
  B commit -q --rm "$ctr" "${REF[$name]}" >/dev/null
  finish "$name" "$t0"
}
key_kuberay_operator() { static_key kuberay-operator kuberay-operator /manager 65532:65532; }
build_kuberay_operator() { static_build kuberay-operator kuberay-operator /manager 65532:65532; }
key_kueue() { static_key kueue kueue /manager 65532:65532; }
build_kueue() { static_build kueue kueue /manager 65532:65532; }
key_pause() { static_key pause pause /pause 65535:65535; }
build_pause() { static_build pause pause /pause 65535:65535; }

# ------------------------------------------------------------------ dependencies
declare -A PARENT=([python-base]=base [ray-base]=base [operator]=python-base [trainjob]=ray-base)
declare -A DONE=()
make_image() {
  local name=$1 fn=${1//-/_}
  [[ -n "${DONE[$name]:-}" ]] && return 0
  [[ -n "${PARENT[$name]:-}" ]] && make_image "${PARENT[$name]}"
  "key_$fn"
  REF[$name]="$registry/$name:${KEY[$name]}"
  if fresh "$name"; then
    log "${REF[$name]} up to date ($(archive_of "$name"))"
  else
    # The Ray images hold PyPI's CUDA torch: their wheels, layers, temporary files and
    # archive take ~11 GiB (ray-base) and ~6 GiB (trainjob); fail before, not halfway.
    case $name in
      ray-base) bash "$root/hack/check-disk.sh" "Building the ray-base image" "$out" 11 ;;
      trainjob) bash "$root/hack/check-disk.sh" "Building the trainjob image" "$out" 6 ;;
    esac
    "build_$fn"
  fi
  DONE[$name]=1
}

case " ${images[*]} " in *" kuberay-operator "*|*" pause "*)
  [[ -x "$cache/bin/kuberay-operator" && -x "$cache/bin/pause" ]] \
    || bash "$root/hack/build-controlplane.sh" cluster ;;
esac
case " ${images[*]} " in *" kueue "*)
  bash "$root/hack/build-kueue.sh" ;;  # its own stamp: returns at once when up to date
esac

t_all=$(date +%s)
for name in "${images[@]}"; do
  declare -F "build_${name//-/_}" >/dev/null || die "unknown image '$name'"
  make_image "$name"
done

# refs.env: every image built so far (older lines for images not built now are kept).
touch "$refs_file"
for name in "${!DONE[@]}"; do
  var="$(tr 'a-z-' 'A-Z_' <<<"$name")_IMAGE"
  grep -v "^$var=" "$refs_file" >"$refs_file.tmp" || true
  echo "$var=${REF[$name]}" >>"$refs_file.tmp"
  mv -f "$refs_file.tmp" "$refs_file"
done
sort -o "$refs_file" "$refs_file"

for t in "${timings[@]}"; do log "$t"; done
log "images ready in $(( $(date +%s) - t_all ))s; references in $refs_file"

if [[ $do_import == 1 ]]; then
  if [[ -S /run/anytasktune-cluster/containerd/containerd.sock ]]; then
    for name in "${images[@]}"; do
      bash "$root/hack/cluster/import-image.sh" "${REF[$name]}"
    done
  else
    log "the cluster is not up: nothing imported (make cluster imports nothing of these; rerun with it up)"
  fi
fi
