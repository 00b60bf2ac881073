"""Serving configuration from the adapter registry (pure): one base model, every
sub-task's active adapter, for vLLM multi-LoRA and for LoRAX.

- vLLM loads LoRA adapters from local folders: the adapters are copied from S3 first
  (`aws s3 sync`), then `vllm serve BASE --enable-lora --max-loras N --max-lora-rank R
  --lora-modules name=path ...`; `--max-lora-rank` is the smallest value vLLM accepts
  that is at least every adapter's rank.
- LoRAX loads adapters per request from S3 itself: `lorax-launcher --model-id BASE
  --adapter-source s3`, and each request names `parameters.adapter_id` (the run's
  s3:// prefix) with `adapter_source: "s3"`.
"""

from __future__ import annotations

import shlex
from typing import Any

# vLLM's LoRAConfig accepts these ranks (vllm/config/lora.py; 320 and 512 since 0.8).
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
ADAPTER_ROOT = "/adapters"


class ServingError(ValueError):
    """The registry cannot be served as asked (nothing active, mixed base models)."""


def active_adapters(registry: dict[str, Any], base_override: str | None = None) -> list[dict[str, Any]]:
    """[{name, adapter, runId, baseModel, rank, verdict, ...}] of every sub-task with an
    active adapter, in name order. All must share one base model (one server serves one)."""
    out = []
    for name, entry in sorted((registry.get("subtasks") or {}).items()):
        active = (entry or {}).get("active")
        if active:
            out.append({"name": name, "adapter": active["adapter"], "runId": active["runId"],
                        "baseModel": active.get("baseModel", ""), "rank": int(active.get("loraRank") or 0),
                        "verdict": active.get("verdict", ""), "since": active.get("since", "")})
    if not out:
        raise ServingError("no sub-task has an active adapter in the registry yet")
    bases = {a["baseModel"] for a in out}
    if len(bases) > 1 and base_override is None:
        raise ServingError(f"the active adapters were trained on different base models: {sorted(bases)}")
    return out


def vllm_rank(ranks: list[int]) -> int:
    need = max([1, *ranks])
    for allowed in VLLM_LORA_RANKS:
        if allowed >= need:
            return allowed
    raise ServingError(f"LoRA rank {need} is above the largest rank vLLM serves ({VLLM_LORA_RANKS[-1]})")


def _local_base(base: str) -> str:
    """vLLM's model argument: a Hugging Face id as is, an s3:// model copied to /models first."""
    return f"/models/{base.rstrip('/').rsplit('/', 1)[-1]}" if base.startswith("s3://") else base


def vllm_config(adapters: list[dict[str, Any]], base: str, endpoint: str | None = None) -> dict[str, Any]:
    args = ["vllm", "serve", _local_base(base), "--enable-lora", "--max-loras", str(len(adapters)),
            "--max-lora-rank", str(vllm_rank([a["rank"] for a in adapters])), "--lora-modules",
            *[f"{a['name']}={ADAPTER_ROOT}/{a['name']}" for a in adapters]]
    endpoint_flag = ["--endpoint-url", endpoint] if endpoint else []
    downloads = [["aws", "s3", "sync", a["adapter"], f"{ADAPTER_ROOT}/{a['name']}/", *endpoint_flag] for a in adapters]
    if base.startswith("s3://"):
        downloads.insert(0, ["aws", "s3", "sync", base, _local_base(base) + "/", *endpoint_flag])
    return {"downloads": downloads, "args": args,
            "request": {"model": adapters[0]["name"], "messages": [{"role": "user", "content": "…"}]}}


def lorax_config(adapters: list[dict[str, Any]], base: str, endpoint: str | None = None) -> dict[str, Any]:
    args = ["lorax-launcher", "--model-id", base, "--adapter-source", "s3",
            "--max-active-adapters", str(max(len(adapters), 1))]
    env = {"AWS_ACCESS_KEY_ID": "…", "AWS_SECRET_ACCESS_KEY": "…", **({"AWS_ENDPOINT_URL": endpoint} if endpoint else {})}
    return {"args": args, "env": env,
            "adapters": {a["name"]: {"adapter_id": a["adapter"].rstrip("/"), "adapter_source": "s3"} for a in adapters},
            "request": {"inputs": "…", "parameters": {"adapter_id": adapters[0]["adapter"].rstrip("/"),
                                                     "adapter_source": "s3", "max_new_tokens": 128}}}


def serve_config(registry: dict[str, Any], *, base_model: str | None = None, endpoint: str | None = None) -> dict[str, Any]:
    adapters = active_adapters(registry, base_model)
    base = base_model or adapters[0]["baseModel"]
    return {"taskFineTune": registry.get("taskFineTune", ""), "baseModel": base, "adapters": adapters,
            "vllm": vllm_config(adapters, base, endpoint), "lorax": lorax_config(adapters, base, endpoint)}


def _command(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def render_text(config: dict[str, Any]) -> str:
    """Shell commands a person can paste."""
    adapters = config["adapters"]
    lines = [f"# {config['taskFineTune']}: {len(adapters)} active adapter(s) on {config['baseModel']}"]
    lines += [f"#   {a['name']}: run {a['runId']} ({a['verdict'] or 'no verdict'}, active since {a['since']})" for a in adapters]
    lines += ["", "# vLLM multi-LoRA (adapters from local folders):"]
    lines += [_command(d) for d in config["vllm"]["downloads"]]
    lines.append(" \\\n    ".join(_command(part) for part in _chunks(config["vllm"]["args"])))
    lines += ["# then ask for a sub-task by name: POST /v1/chat/completions {\"model\": \"<sub-task>\", ...}", "",
              "# LoRAX (adapters loaded from S3 per request):"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in config["lorax"]["env"].items()]
    lines.append(_command(config["lorax"]["args"]))
    for name, adapter in config["lorax"]["adapters"].items():
        lines.append(f"#   {name}: \"parameters\": {{\"adapter_id\": \"{adapter['adapter_id']}\", \"adapter_source\": \"s3\"}}")
    return "\n".join(lines) + "\n"


def _chunks(args: list[str]) -> list[list[str]]:
    """vllm serve BASE, then one flag (with its values) per line."""
    out: list[list[str]] = [args[:3]]
    for arg in args[3:]:
        if arg.startswith("--"):
            out.append([arg])
        else:
            out[-1].append(arg)
    return out
