"""`anytasktune serve-config`: the printed configuration parses under the options
vLLM and LoRAX document (argparse mirrors of `vllm serve` and `lorax-launcher`,
flags and value rules taken from their docs), and names every active adapter."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import pytest

from anytasktune.cli import main
from anytasktune.serving import VLLM_LORA_RANKS, ServingError, render_text, serve_config, vllm_rank

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _run(name: str, run_id: str, rank: int, base: str = BASE) -> dict[str, Any]:
    return {"runId": run_id, "adapter": f"s3://adapters/legal/{name}/runs/{run_id}/", "baseModel": base,
            "loraRank": rank, "verdict": "adapter wins", "since": "2026-11-25T10:00:00Z", "reason": "Promoted"}


REGISTRY: dict[str, Any] = {
    "kind": "AdapterRegistry", "taskFineTune": "legal",
    "subtasks": {
        "keyword-extraction": {"active": _run("keyword-extraction", "3fa2c1d9e0", 16), "runs": []},
        "clause-risk": {"active": _run("clause-risk", "77ab01c2d3", 32), "runs": []},
        "case-split": {"active": None, "runs": [_run("case-split", "0000000000", 8)]},  # not promoted
    },
}


def vllm_parser() -> argparse.ArgumentParser:
    """`vllm serve MODEL` with its documented LoRA options (docs/features/lora.md,
    engine args): --lora-modules takes name=path or a JSON object, several at once;
    --max-lora-rank is one of LoRAConfig's allowed ranks."""
    def lora_module(value: str) -> str:
        if value.startswith("{"):
            doc = json.loads(value)
            assert {"name", "path"} <= set(doc)
        elif not re.fullmatch(r"[^=\s]+=[^=\s]+", value):
            raise argparse.ArgumentTypeError(f"not name=path: {value}")
        return value

    p = argparse.ArgumentParser(prog="vllm serve", exit_on_error=False)
    p.add_argument("model")
    p.add_argument("--enable-lora", action="store_true")
    p.add_argument("--lora-modules", nargs="+", type=lora_module)
    p.add_argument("--max-lora-rank", type=int, choices=VLLM_LORA_RANKS)
    p.add_argument("--max-loras", type=int)
    return p


def lorax_parser() -> argparse.ArgumentParser:
    """`lorax-launcher` (docs/reference/launcher.md)."""
    p = argparse.ArgumentParser(prog="lorax-launcher", exit_on_error=False)
    p.add_argument("--model-id", required=True)
    p.add_argument("--adapter-source", choices=["hub", "s3", "pbase", "local"])
    p.add_argument("--max-active-adapters", type=int)
    return p


def test_vllm_command_parses_and_lists_every_active_adapter() -> None:
    config = serve_config(REGISTRY)
    args = config["vllm"]["args"]
    assert args[:2] == ["vllm", "serve"]
    parsed = vllm_parser().parse_args(args[2:])
    assert parsed.model == BASE and parsed.enable_lora and parsed.max_loras == 2
    assert parsed.max_lora_rank == 32  # the smallest allowed rank >= every adapter's r
    assert parsed.lora_modules == ["clause-risk=/adapters/clause-risk", "keyword-extraction=/adapters/keyword-extraction"]
    # each module's folder is filled from the run's S3 prefix first
    synced = {d[-1]: d[3] for d in config["vllm"]["downloads"]}
    assert synced["/adapters/clause-risk/"] == "s3://adapters/legal/clause-risk/runs/77ab01c2d3/"
    assert config["vllm"]["request"]["model"] in {"clause-risk", "keyword-extraction"}


def test_lorax_launcher_and_requests_name_the_s3_adapters() -> None:
    lorax = serve_config(REGISTRY, endpoint="http://minio:9000")["lorax"]
    parsed = lorax_parser().parse_args(lorax["args"][1:])
    assert parsed.model_id == BASE and parsed.adapter_source == "s3" and parsed.max_active_adapters == 2
    assert lorax["adapters"]["clause-risk"] == {"adapter_id": "s3://adapters/legal/clause-risk/runs/77ab01c2d3",
                                                "adapter_source": "s3"}
    assert set(lorax["request"]["parameters"]) >= {"adapter_id", "adapter_source"}
    assert lorax["env"]["AWS_ENDPOINT_URL"] == "http://minio:9000"


@pytest.mark.parametrize(("ranks", "expected"), [([1], 8), ([8, 16], 16), ([17], 32), ([256], 256), ([300], 320)])
def test_vllm_rank_is_an_allowed_value_covering_every_adapter(ranks: list[int], expected: int) -> None:
    assert vllm_rank(ranks) == expected


def test_an_s3_base_model_is_copied_before_vllm_starts() -> None:
    registry = {"taskFineTune": "t", "subtasks": {"a": {"active": _run("a", "1111111111", 8, base="s3://models/qwen/")}}}
    config = serve_config(registry)
    assert config["vllm"]["downloads"][0][3:5] == ["s3://models/qwen/", "/models/qwen/"]
    assert config["vllm"]["args"][2] == "/models/qwen"
    assert config["lorax"]["args"][2] == "s3://models/qwen/"


def test_nothing_to_serve_and_mixed_bases_are_refused() -> None:
    with pytest.raises(ServingError, match="no sub-task has an active adapter"):
        serve_config({"subtasks": {"a": {"active": None}}})
    mixed = {"subtasks": {"a": {"active": _run("a", "1111111111", 8)}, "b": {"active": _run("b", "2222222222", 8, base="x/y")}}}
    with pytest.raises(ServingError, match="different base models"):
        serve_config(mixed)


def test_text_output_is_paste_ready(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "legal"
    folder.mkdir()
    (folder / "index.json").write_text(json.dumps(REGISTRY))
    assert main(["serve-config", "legal", "--workdir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "vllm serve HuggingFaceTB/SmolLM2-135M-Instruct" in text and "--enable-lora" in text
    assert "--lora-modules clause-risk=/adapters/clause-risk keyword-extraction=/adapters/keyword-extraction" in text
    assert "lorax-launcher --model-id HuggingFaceTB/SmolLM2-135M-Instruct --adapter-source s3" in text
    assert "case-split" not in text  # not active: not served
    assert text == render_text(serve_config(REGISTRY))
    assert main(["serve-config", "legal", "--workdir", str(tmp_path), "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["vllm"]["args"][:2] == ["vllm", "serve"]
    assert main(["serve-config", "other", "--workdir", str(tmp_path)]) == 1
