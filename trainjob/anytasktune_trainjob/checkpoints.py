"""The run's checkpoint folder in storage, beside Ray Train's own bookkeeping.

Ray Train's controller learns of a reported checkpoint when it next polls the workers
(every 2 s); a worker lost before that takes the report with it, and the restarted
workers get the checkpoint before — measured: a worker SIGKILLed one step after its
step-12 checkpoint was reported restarted from step 0. So each checkpoint also gets a
marker of ours once every rank's files are uploaded (`mark_complete`, after a barrier),
and a restarting worker takes the newest marked checkpoint when it is newer than the
one Ray Train hands it (`newest`). Checkpoint folders are named by step
(`checkpoint_step_0000012`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from anytasktune_contract.storage import ObjectStore, S3Uri

COMPLETE = "anytasktune-complete.json"
_STEP_DIR = re.compile(r"checkpoint_step_(\d+)/?$")


def dir_name(step: int) -> str:
    return f"checkpoint_step_{step:07d}"


def step_of(path: str) -> int | None:
    """The step of a checkpoint folder named by `dir_name`, else None."""
    found = _STEP_DIR.search(path)
    return int(found.group(1)) if found else None


@dataclass(frozen=True)
class CheckpointFolder:
    """`uri`: s3://… of Ray Train's experiment folder (<storage_path>/<name>/)."""

    uri: str
    storage: ObjectStore

    def mark_complete(self, step: int) -> None:
        """Call on one rank once every rank's files for `step` are uploaded."""
        self.storage.put_json(S3Uri.parse(self.uri).join(dir_name(step), COMPLETE), {"step": step})

    def complete_steps(self) -> list[int]:
        uri = S3Uri.parse(self.uri)
        steps = [step_of(o["key"][len(uri.prefix):].removesuffix("/" + COMPLETE))
                 for o in self.storage.list_objects(uri) if o["key"].endswith("/" + COMPLETE)]
        return sorted(s for s in steps if s is not None)

    def newest(self, registered: Any, filesystem: Any) -> tuple[Any, bool]:
        """(the checkpoint to restore, whether it is ours rather than Ray Train's):
        Ray Train's unless a newer one is marked complete in storage."""
        mine = max(self.complete_steps(), default=None)
        theirs = step_of(registered.path) if registered is not None else None
        if mine is None or (registered is not None and (theirs is None or theirs >= mine)):
            return registered, False
        import ray.train

        folder = S3Uri.parse(self.uri).join(dir_name(mine))
        return ray.train.Checkpoint(f"{folder.bucket}/{folder.key}", filesystem=filesystem), True
