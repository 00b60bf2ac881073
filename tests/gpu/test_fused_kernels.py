"""The GPU tier (`make test-gpu`): what only a CUDA device can check. CI has none, so these
skip there; run them where a GPU is (the closing notes say where they last ran).

training.fusedKernels must not change what is learned: through the trainjob's own
`build_lora_model`, the loss and the LoRA gradients of one batch with Liger-Kernel's fused
kernels match the plain model's, in the trainjob's GPU dtype (bf16) and in fp32."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import tinymodel

    records = tinymodel.sentiment_records(24, seed=3)
    return tinymodel.save_tiny_model(tmp_path_factory.mktemp("tiny"), tinymodel.training_texts(records, "Classify"))


def _spec(fused: bool) -> Any:
    from anytasktune_contract.trainspec import TrainJobSpec

    return TrainJobSpec.model_validate({
        "taskFineTune": "t", "domain": "d", "subtask": "s", "instruction": "Classify", "taskType": "classification",
        "baseModel": {"uri": "s3://bucket/models/tiny/"}, "dataset": {"uri": "s3://bucket/data/x.jsonl"},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0,
                 "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
        "training": {"fusedKernels": fused}, "deepspeed": {}, "evaluation": {}, "dataContract": {}, "storage": {},
        "outputPrefix": "s3://bucket/runs/t/s", "scaling": {"useGpu": True, "gpusPerWorker": 1},
    })


def _loss_and_grads(model: Any, batch: dict[str, Any]) -> tuple[float, Any]:
    torch.manual_seed(1)
    for name, p in model.named_parameters():  # LoRA's B starts at zero: give the adapters something to do
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    loss = model(**batch).loss
    loss.backward()
    grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.requires_grad])
    return float(loss), grads


@pytest.mark.parametrize("dtype_name, loss_tolerance, min_cosine", [("bfloat16", 2e-2, 0.99), ("float32", 1e-4, 0.9999)])
def test_fused_kernels_learn_what_the_plain_model_learns(tiny_model_dir: Path, dtype_name: str, loss_tolerance: float,
                                                         min_cosine: float) -> None:
    import tinymodel

    from anytasktune_trainjob.training import build_lora_model

    dtype = getattr(torch, dtype_name)
    with tinymodel.liger_patches_undone():
        torch.manual_seed(0)
        ids = torch.randint(3, 200, (4, 96), device="cuda")
        labels = ids.clone()
        labels[:, :40] = -100  # prompt tokens carry no loss, as the trainjob encodes them
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
        # the plain model first: Liger swaps the module's classes and rotary function for later models
        plain_loss, plain_grads = _loss_and_grads(build_lora_model(_spec(False), str(tiny_model_dir), dtype).model.cuda(), batch)
        fused = build_lora_model(_spec(True), str(tiny_model_dir), dtype).model.cuda()
        assert fused.base_model.model.forward.__func__.__module__.startswith("liger_kernel")
        fused_loss, fused_grads = _loss_and_grads(fused, batch)
    assert abs(fused_loss - plain_loss) <= loss_tolerance * abs(plain_loss), (fused_loss, plain_loss)
    cosine = float(torch.nn.functional.cosine_similarity(fused_grads, plain_grads, dim=0))
    assert cosine >= min_cosine, cosine
    assert float(fused_grads.norm() / plain_grads.norm()) == pytest.approx(1.0, rel=10 * loss_tolerance)
