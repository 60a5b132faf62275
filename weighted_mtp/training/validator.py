"""Validation at each checkpoint interval.

On a fixed subset of ``dataset.validation`` (``training.eval_samples`` records, chosen
once by seed): ``val/mtp_ce`` is the plain (unweighted) MTP cross-entropy over the
correct records' response tokens, the same number for every stage so runs compare;
``val/head{k}_ce`` per head. With a value head: ``val/value_loss`` over all records and
``val/auroc``, how well V at the last state separates correct from incorrect (left out
when the subset holds only one class, where it is undefined).
``val/loss`` (what ``save_best`` minimises) is ``val/mtp_ce``, or ``val/value_loss`` for a
stage without MTP loss (critic). Under FSDP every rank runs the same number of batches
(ranks with fewer records run padding batches that count nothing), so the sharded model's
collectives match.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from weighted_mtp import distributed as dist
from weighted_mtp.data.collate import Collator
from weighted_mtp.data.dataset import ProcessedDataset
from weighted_mtp.data.sampling import validation_indices
from weighted_mtp.distributed import DistInfo
from weighted_mtp.models.mtp import MTPTransformer
from weighted_mtp.training.losses import mtp_loss, mtp_targets
from weighted_mtp.training.runtime import autocast
from weighted_mtp.training.task import Task
from weighted_mtp.training.value import (
    auroc,
    last_state_values,
    value_loss,
    value_mask,
    value_targets,
)

EVAL_BATCH_FACTOR = 4


class Validator:
    def __init__(
        self,
        cfg: DictConfig,
        task: Task,
        model: MTPTransformer,
        collator: Collator,
        device: torch.device,
        amp: torch.dtype | None,
        info: DistInfo | None = None,
        pad: bool = False,
    ) -> None:
        """``pad``: every rank runs the same number of batches (sharded models issue
        collectives in each forward); padding batches repeat a record and count nothing."""
        self.task, self.model, self.collator = task, model, collator
        self.device, self.amp = device, amp
        self.dataset = ProcessedDataset(cfg.dataset.validation)
        ids = validation_indices(
            self.dataset.index,
            correct_only=task.value_head is None,
            n=cfg.training.eval_samples,
            seed=cfg.data_sampling.seed,
        )
        self.info = info = info or DistInfo()
        self.records = self.dataset.records(ids[info.rank :: info.world_size])  # this shard
        # no gradients are kept, so validation batches can be larger than training ones
        self.batch_size = bs = cfg.training.batch_size * EVAL_BATCH_FACTOR
        self.n_batches = -(-len(self.records) // bs)
        self.pad_records = []
        if pad and len(ids):
            most = -(-len(ids) // info.world_size)  # rank 0's share, the largest
            self.n_batches = -(-most // bs)
            self.pad_records = self.dataset.records(ids[:1])

    @torch.no_grad()
    def run(self) -> dict[str, float]:
        n = self.model.n_future_tokens
        ce_sum, ce_count = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
        v_sum, v_count = 0.0, 0
        last_v, correct = [], []
        for i in range(self.n_batches):
            records = self.records[i * self.batch_size : (i + 1) * self.batch_size]
            real = bool(records)
            batch = self.collator(records or self.pad_records).to(self.device)
            with autocast(self.device, self.amp):
                h = self.task.trunk(self.model, batch)
                if self.task.weighting is not None:
                    labels = batch.labels.masked_fill(~batch.is_correct[:, None], -100)
                    out = mtp_loss(
                        self.model,
                        h,
                        batch.attention_mask,
                        mtp_targets(labels, n),
                        denominator=1.0,
                        backward=False,
                    )
                    if real:
                        ce_sum += (out.head_ce * out.head_valid).double().cpu()
                        ce_count += out.head_valid.double().cpu()
                if self.task.value_head is not None and real:
                    values = self.task.value_head(h).float()
                    vmask = value_mask(batch.labels)
                    vt = value_targets(values, batch.reward, vmask, self.task.gamma, self.task.lam)
                    v_sum += float(value_loss(values, vt, vmask, self.task.value_loss_type, 1.0))
                    v_count += int(vmask.sum())
                    last_v.append(last_state_values(values, vmask).cpu())
                    correct.append(batch.is_correct.cpu())
        info = self.info
        ce_sum, ce_count = dist.all_reduce_sum(ce_sum, info), dist.all_reduce_sum(ce_count, info)
        v_sum, v_count = dist.all_reduce_sum(torch.tensor([v_sum, v_count]), info).tolist()
        metrics: dict[str, float] = {}
        if ce_count.sum() > 0:
            metrics["val/mtp_ce"] = float(ce_sum.sum() / ce_count.sum())
            head = ce_sum / ce_count.clamp(min=1)
            metrics |= {f"val/head{k}_ce": float(v) for k, v in enumerate(head)}
        if self.task.value_head is not None:
            metrics["val/value_loss"] = v_sum / max(v_count, 1)
            mine = (torch.cat(last_v), torch.cat(correct)) if last_v else (torch.zeros(0),) * 2
            scores = dist.all_gather_objects(mine, info)
            score = auroc(torch.cat([s for s, _ in scores]), torch.cat([c for _, c in scores]))
            if score == score:  # undefined (NaN) when the subset holds one class: left out
                metrics["val/auroc"] = score
        key = "val/mtp_ce" if self.task.weighting is not None else "val/value_loss"
        metrics["val/loss"] = metrics.get(key, float("nan"))
        return metrics
