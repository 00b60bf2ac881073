"""Restoring a checkpoint on a node that hosts several Ray Train workers.

Regression: two workers restored the same checkpoint through Ray's
`Checkpoint.as_directory()`, which downloads into ONE temporary folder per node
and deletes it when a reader leaves; the other worker then found the folder gone
("Checkpoint directory ... does not exist, even though it should have been
created by another process"). Every worker must restore into a folder of its own.
The checkpoint here lives on pyarrow's in-memory filesystem, so Ray downloads it
exactly as it downloads one from S3.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow.fs as pafs
from ray.train import Checkpoint

from anytasktune_trainjob.training import restored_checkpoint


def _remote_checkpoint() -> Checkpoint:
    fs = pafs._MockFileSystem()
    fs.create_dir("ckpt/ds")
    with fs.open_output_stream("ckpt/trainer_state.json") as f:
        f.write(b'{"step": 3}')
    with fs.open_output_stream("ckpt/ds/shard.pt") as f:
        f.write(b"x" * 1024)
    return Checkpoint("ckpt", filesystem=fs)


def test_each_reader_gets_its_own_folder_and_keeps_it_until_done() -> None:
    checkpoint = _remote_checkpoint()
    both_inside = threading.Barrier(2)
    first_left = threading.Event()
    seen: dict[str, tuple[Path, str]] = {}
    errors: list[BaseException] = []

    def reader(who: str) -> None:
        try:
            with restored_checkpoint(checkpoint) as folder:
                both_inside.wait(timeout=30)
                if who == "late":
                    assert first_left.wait(timeout=30)  # the other worker already left and cleaned up
                seen[who] = (folder, (folder / "trainer_state.json").read_text())
            if who == "early":
                first_left.set()
        except BaseException as err:  # noqa: BLE001 - re-raised in the test thread
            errors.append(err)
            first_left.set()

    threads = [threading.Thread(target=reader, args=(w,)) for w in ("early", "late")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert seen["early"][1] == seen["late"][1] == '{"step": 3}'
    assert seen["early"][0] != seen["late"][0]
    assert not seen["early"][0].exists() and not seen["late"][0].exists()  # nothing left behind
