"""What a run writes about itself: ``log.jsonl`` (training), ``eval.jsonl`` (evaluations) and
TensorBoard scalars (``tb/``), in one place; a no-op off the main process."""

from __future__ import annotations

import json
from pathlib import Path

from ..extras import available, require


def tensorboard_writer(log_dir):
    """A TensorBoard ``SummaryWriter``, or None when tensorboard (the ``train`` extra) is not
    installed: then the run logs to log.jsonl only. Imported here, when a run starts."""
    if not available("torch.utils.tensorboard"):
        return None
    return require("torch.utils.tensorboard", "TensorBoard logging").SummaryWriter(str(log_dir))


def _append_json(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


class RunLog:
    """``OUT/log.jsonl``, ``OUT/eval.jsonl`` and ``OUT/tb/``; ``enabled=False`` (ranks other than
    0) writes nothing."""

    def __init__(self, out: str | Path, enabled: bool = True):
        self.out = Path(out)
        self.enabled = enabled
        self.writer = None

    def open_tensorboard(self) -> None:
        if self.enabled and self.writer is None:
            self.writer = tensorboard_writer(self.out / "tb")

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def train(self, step: int, record: dict, scalars: dict) -> None:
        """Append ``{"step": step, **record}`` to log.jsonl; ``scalars`` to TensorBoard (train/)."""
        if self.enabled:
            _append_json(self.out / "log.jsonl", {"step": step, **record})
            self.scalars("train", scalars, step)

    def eval(self, step: int, record: dict, scalars: dict) -> None:
        """Append ``record`` to eval.jsonl; ``scalars`` to TensorBoard (eval/)."""
        if self.enabled:
            _append_json(self.out / "eval.jsonl", record)
            self.scalars("eval", scalars, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
