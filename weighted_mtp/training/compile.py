"""Speed options of the ``training`` section, applied once to the policy and the task.

``training.compile``: regional ``torch.compile`` - each trunk and head block's forward is
compiled (:meth:`~weighted_mtp.models.mtp.MTPTransformer.set_compile`, one shared graph for
every block, like torchtitan's per-TransformerBlock compile); the embeddings, the shared
norm / output and the head-by-head chunked loss stay eager (its chunk count and the
weightings' Python vary per batch). Applied before the parallelism shards the model
(FSDP2's hooks run eagerly around each compiled block body) and independent of activation
checkpointing (the checkpointed call recomputes through the compiled forward). Every
stage's policy honours it (baseline, critic's frozen trunk, verifiable, rho1); the Rho-1
reference is a Hugging Face model scored once into its cache and then released, so it is
not compiled. Backend: ``inductor``, or the internal knob WEIGHTED_MTP_COMPILE_BACKEND
(:data:`~weighted_mtp.models.mtp.COMPILE_BACKEND`, the CPU tests use ``aot_eager``).

``training.loss_chunk_size``: tokens per vocabulary-projection chunk of
:func:`~weighted_mtp.training.losses.mtp_loss` (``Task.chunk_size``).

The training loop calls :func:`apply` right after the stage builds its task, before the
policy is materialised and sharded; the memory plan's simulation applies the chunk size.
"""

from __future__ import annotations

from typing import Any

from weighted_mtp.models.mtp import MTPTransformer
from weighted_mtp.training.task import Task


def apply(training: Any, model: MTPTransformer, task: Task, compile_blocks: bool = True) -> None:
    """Apply ``training.compile`` and ``training.loss_chunk_size`` (the ``training``
    config section, or any object with those attributes) to ``model`` and ``task``.
    ``compile_blocks=False``: the chunk size only (the memory plan's simulation, which
    runs on fake tensors, leaves the blocks eager)."""
    model.set_compile(compile_blocks and bool(getattr(training, "compile", False)))
    task.chunk_size = int(getattr(training, "loss_chunk_size", task.chunk_size))
