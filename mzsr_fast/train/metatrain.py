"""Meta-transfer learning, docs/method.md section 7.

Each meta-iteration draws meta_batch tasks; a task is one blur kernel from the
training distribution and 2 x task_batch HR patches (support, query), degraded
with the task's kernel on the training device. mzsr_fast.maml.inner_loop takes
inner_steps SGD steps on each support set; the meta loss is the MAML++
multi-step loss (weighted query losses after every inner step, weights
annealed towards the last step) and the meta optimiser is Adam.

Gradient order: first order for iterations < first_order_until, then `order`
(default 2 from the start, as the reference). Optional learnable inner rates
(one per step and parameter tensor, MAML++ "LSLR"), trained by the same Adam.

    from mzsr_fast.train import MetatrainConfig, metatrain
    metatrain(MetatrainConfig("data/train", out="runs/meta", init="runs/pre"))
"""
from __future__ import annotations

import dataclasses

import torch

from ..degradation import PRESETS
from ..losses import check_loss
from ..pretrained import CATALOGUE, ModelInfo
from . import distributed, validation
from .checkpoints import weights_bytes
from .data import ImageBank, TaskBatch, task_pairs
from .precision import autocast
from .run import TrainResult, train
from .settings import RunSettings, non_negative_float, non_negative_int, positive_float, positive_int
from .trainer import Trainer

__all__ = ["MetatrainConfig", "MetaLearner", "metatrain"]


@dataclasses.dataclass
class MetatrainConfig(RunSettings):
    """Settings of a meta-training run (defaults: docs/method.md section 7).

    init: pretrained weights (.safetensors or a pretraining run folder); None
    starts from the reference initialisation (not what the paper does).
    task_batch: patches in each of the support and query sets of a task.
    msl: MAML++ multi-step loss; off: the loss after the last step only.
    inner_lr_from_init: the learned rates start from the init model's own
    schedule (pretrained.ModelInfo.schedule) instead of inner_lr.
    msl_decay: per-iteration fall of the first K-1 MSL weights (None: the
    reference's 1 / K / (10000 / 3), 6e-5 for K = 5); they stop at 0.03 / K
    and the last weight takes the rest (docs/method.md section 7). 0 keeps
    every step's weight at 1 / K, so the first step's query loss stays in the
    meta-objective (a model meant for one step and for K).
    adapt_loss: the loss the inner steps descend on the support set, and the
    trained model's test-time loss (ModelInfo.adapt_loss); one of
    mzsr_fast.losses.LOSSES. The query loss is L1 whatever it is.
    kernel_min_variance: the smallest variance of the task kernels (1, the
    paper's; gaussian.sample_kernel_params).
    """

    data_dir: str
    out: str
    init: str | None = None
    iterations: int = 100_000
    variant: str = "direct_x2"
    meta_batch: int = 5
    task_batch: int = 8
    patch_size: int = 64
    inner_steps: int = 5
    inner_lr: float = 0.01
    learn_inner_lr: bool = False
    inner_lr_from_init: bool = False
    meta_lr: float = 1e-4
    order: int = 2
    first_order_until: int = 0
    msl: bool = True
    msl_decay: float | None = None
    adapt_loss: str = "l1"
    kernel_min_variance: float = 1.0
    kernel_size: int = 15
    val_kernels: tuple[str, ...] | None = None
    val_steps: tuple[int, ...] = (1, 10)
    log_every: int = 10
    prefetch: int = 2

    def check(self) -> "MetatrainConfig":
        positive_int(self, "iterations", "meta_batch", "task_batch", "patch_size", "inner_steps", "kernel_size",
                     "log_every", "prefetch")
        self.check_run_settings()
        non_negative_int(self, "first_order_until")
        positive_float(self, "inner_lr", "meta_lr")
        if self.inner_lr_from_init and not self.learn_inner_lr:
            raise ValueError("inner_lr_from_init: the init model's schedule is where learned rates start; "
                             "it needs learn_inner_lr (--learn-inner-lr)")
        check_loss(self.adapt_loss, "adapt_loss")
        if self.variant not in CATALOGUE:
            raise ValueError(f"variant: expected one of {sorted(CATALOGUE)}, got {self.variant!r}")
        positive_float(self, "kernel_min_variance")
        largest = 2.5 * min(CATALOGUE[self.variant].task_scales)
        if self.kernel_min_variance >= largest:
            raise ValueError(f"kernel_min_variance: expected less than {largest:g} (2.5 x the smallest scale of "
                             f"{self.variant}), got {self.kernel_min_variance}")
        if self.order not in (1, 2):
            raise ValueError(f"order: expected 1 (first order) or 2 (second order), got {self.order!r}")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: expected an odd size, got {self.kernel_size}")
        if self.msl_decay is not None:
            non_negative_float(self, "msl_decay")
        if self.patch_size < 2 * max(CATALOGUE[self.variant].task_scales):
            raise ValueError(f"patch_size: {self.patch_size} is too small for the scales of {self.variant}")
        for name in self.val_kernels or ():
            if name not in PRESETS:
                raise ValueError(f"val_kernels: unknown kernel preset {name!r}; expected some of {sorted(PRESETS)}")
        if not self.val_steps or any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in self.val_steps):
            raise ValueError(f"val_steps: expected integers >= 0, got {self.val_steps!r}")
        return self


class MetaLearner(Trainer):
    """Model, inner rates, meta optimiser and task data of a meta-training run
    (the trainer interface of run.train)."""

    def __init__(self, config: MetatrainConfig, dist: distributed.Distributed | None = None,
                 bank: ImageBank | None = None):
        super().__init__(config, dist, bank, batch_field="meta_batch", batch_unit="tasks")
        self.variant = CATALOGUE[config.variant]
        self.model.to(self.device)
        self.names = [name for name, _ in self.model.named_parameters()]
        groups = [{"params": list(self.model.parameters())}]
        self.inner_lr = None
        if config.learn_inner_lr:
            self.inner_lr = torch.nn.Parameter(self._initial_rates().to(self.device))
            groups.append({"params": [self.inner_lr]})
        self.optimizer = torch.optim.Adam(groups, lr=config.meta_lr)
        k = config.inner_steps
        self.val_kernels = tuple(config.val_kernels) if config.val_kernels else self.variant.val_kernels
        self.columns = (["meta_lr", "order", "loss", "support_loss"] + [f"query_loss_{i + 1}" for i in range(k)]
                        + [f"msl_{i + 1}" for i in range(k)]
                        + (["inner_lr_mean"] if config.learn_inner_lr else [])
                        + [f"psnr_{name}_mzsr{n}" for name in self.val_kernels for n in config.val_steps])
        self._val_images = None
        if config.validate_every and self.dist.is_main:  # fail before training, not at the first validation
            size = max(PRESETS[name].size for name in self.val_kernels)
            self._val_images = validation.load_images(config.val_dir or self.holdout, self.variant.scales[0],
                                                      min_lr_size=size, crop=config.val_crop)

    def _initial_rates(self) -> torch.Tensor:
        """The learnable inner rates' start, [inner_steps, tensors]: inner_lr
        everywhere, or with inner_lr_from_init the init model's own test-time
        schedule (its per-step rows, the last repeating), so that a run from a
        model with learned rates starts where that model is."""
        c = self.config
        rates = torch.full((c.inner_steps, len(self.names)), c.inner_lr)
        if c.inner_lr_from_init and c.init:  # a resumed run (no init) takes its checkpoint's rates instead
            from ..adapt import learning_rates
            from ..pretrained import load_model

            for step, entry in enumerate(learning_rates(load_model(c.init)[1].schedule, c.inner_steps)):
                rates[step] = torch.tensor(entry, dtype=torch.float32)
        return rates

    # -- data -------------------------------------------------------------
    def batch(self, step: int) -> TaskBatch:
        """This rank's tasks of iteration step, cut on the CPU (a pure function of seed and step)."""
        return self.sampler.task_batch(step, *self.shard, 2 * self.config.task_batch, self.variant.task_scales,
                                       self.config.kernel_min_variance)

    def task_sets(self, batch: TaskBatch):
        """(support, query) on the device: pairs (inputs, targets) of [T, task_batch, 3, P, P]."""
        inputs, targets = task_pairs(batch, self.device, self.variant.mode, self.config.kernel_size)
        n = self.config.task_batch
        return (inputs[:, :n], targets[:, :n]), (inputs[:, n:], targets[:, n:])

    # -- schedules --------------------------------------------------------
    def order_at(self, step: int) -> int:
        return 1 if step < self.config.first_order_until else self.config.order

    def loss_weights(self, step: int) -> torch.Tensor:
        """The multi-step-loss weights [inner_steps] at iteration step."""
        k = self.config.inner_steps
        if not self.config.msl:
            weights = torch.zeros(k)
            weights[-1] = 1
            return weights
        from .. import maml
        decay = self.config.msl_decay if self.config.msl_decay is not None else 1.0 / k / (10000 / 3)
        return maml.msl_weights(step, k, decay=decay)

    # -- one iteration ----------------------------------------------------
    def compute_gradients(self, batch: TaskBatch, step: int) -> dict[str, torch.Tensor]:
        """Meta-gradient of iteration step into .grad (summed over ranks).

        Each rank's loss is its tasks' weighted query losses divided by the
        global meta_batch, so the all-reduced gradient is that of the mean
        over all tasks. Returns this rank's share of the logged quantities.
        """
        c = self.config
        support, query = self.task_sets(batch)
        params = dict(self.model.named_parameters())
        rates = self.inner_lr if self.inner_lr is not None else c.inner_lr
        from .. import maml
        with autocast(self.device, c.amp):
            result = maml.inner_loop(params, support, query, c.inner_steps, rates, order=self.order_at(step),
                                     loss=c.adapt_loss, query_loss="l1")
        query_losses = result.query_losses.float()  # [K, T_local]
        share = query_losses.shape[1] / c.meta_batch  # this rank's share of the mean over all tasks
        loss = maml.multi_step_loss(query_losses, self.loss_weights(step)) * share
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.dist.all_reduce_gradients(p for group in self.optimizer.param_groups for p in group["params"])
        stats = {"loss": loss.detach(), "support_loss": result.support_losses[0].float().sum() / c.meta_batch}
        per_step = query_losses.detach().sum(1) / c.meta_batch
        stats.update({f"query_loss_{i + 1}": v for i, v in enumerate(per_step)})
        return stats

    def train_step(self, batch: TaskBatch, step: int) -> dict[str, torch.Tensor]:
        stats = self.compute_gradients(batch, step)
        self.optimizer.step()
        return stats

    def row(self, step: int) -> dict:
        out = {"meta_lr": self.config.meta_lr, "order": self.order_at(step)}
        out.update({f"msl_{i + 1}": float(w) for i, w in enumerate(self.loss_weights(step))})
        if self.inner_lr is not None:
            out["inner_lr_mean"] = float(self.inner_lr.detach().mean())
        return out

    # -- validation and checkpoints ---------------------------------------
    def validate(self) -> dict[str, float]:
        c = self.config
        scale = self.variant.scales[0]
        return validation.mzsr_psnr(self.model, self._val_images, list(self.val_kernels), scale,
                                    steps=tuple(c.val_steps), schedule=self.model_info().schedule,
                                    mode=self.variant.mode, device=self.device, adapt_loss=c.adapt_loss)

    def model_info(self) -> ModelInfo:
        """The variant's info; with learned inner rates, their table (steps x
        parameter tensors, clamped to the [0, 0.99] a model file accepts) is the
        model's test-time schedule. The notes name the held-out split."""
        v = self.variant
        schedule = ()
        if self.inner_lr is not None:
            table = self.inner_lr.detach().clamp(0, 0.99).cpu()
            schedule = tuple(tuple(float(r) for r in row) for row in table)
        notes = {"holdout": self.config.holdout} if self.config.holdout else {}
        return ModelInfo(name=f"metatrain-{v.name}", kind=v.name, mode=v.mode, scales=v.scales, notes=notes,
                         own_schedule=schedule, adapt_loss=self.config.adapt_loss)

    def restore(self, weights: dict, state: dict) -> None:
        self.model.load_state_dict(weights)
        if self.inner_lr is not None:
            saved = state.get("inner_lr")
            if saved is None or saved.shape != self.inner_lr.shape:
                raise ValueError("resume: the checkpoint has no learnable inner rates of shape "
                                 f"{tuple(self.inner_lr.shape)}")
            with torch.no_grad():
                self.inner_lr.copy_(saved)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as error:  # parameter groups changed (allowed config change)
            raise ValueError(f"resume: the saved optimiser state does not fit the new settings ({error}); "
                             f"start a new run") from None
        for group in self.optimizer.param_groups:  # the saved state carries the rate it ran at, not meta_lr's
            group["lr"] = self.config.meta_lr

    def checkpoint(self):
        extra, files = {}, None
        if self.inner_lr is not None:
            rates = self.inner_lr.detach().cpu()
            extra["inner_lr"] = rates
            files = {"inner_lr.safetensors": weights_bytes({"inner_lr": rates},
                                                           {"names": ",".join(self.names)})}
        return extra, self.model_info().metadata(), files


def metatrain(config: MetatrainConfig, on_step=None) -> TrainResult:
    """Run (or, with config.resume, continue) meta-training in config.out.

    Returns when config.iterations are done or a stop signal arrived (then
    result.interrupted is True and a checkpoint was saved). on_step(step, run)
    is called after each iteration. Under torchrun the tasks are shared by the
    processes, the meta-gradients all-reduced, and only rank 0 writes.
    RUN_DIR/latest.safetensors carries the variant's ModelInfo, so
    mzsr_fast.adapt.adapt(model=path) uses the right subsampling and schedule.
    """
    return train("metatrain", config, MetaLearner, on_step)
