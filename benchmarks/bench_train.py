"""Training throughput: meta-iterations per second of mzsr_fast.train at the
paper's default settings (5 tasks x 5 inner steps, 8 + 8 patches of 64 x 64,
direct x2, second and first order) and pretraining iterations per second
(batch 32 of 96 x 96), each against a straightforward implementation in the
same run:

- meta-training: a per-task Python loop with torch.autograd.grad, and task
  data made as the reference does, in numpy/scipy on the CPU (correlate with a
  'reflect' border, subsample, numpy bicubic up), one patch at a time;
- pretraining: an nn.Module with torch.optim.Adam on the same patches,
  bicubic pairs made in numpy one patch at a time.

Both sides get the same HR patches and kernels (cut by PatchSampler), so the
difference is the task-data pipeline and the inner loop. One round each after
a warm-up round, interleaved (naive warm-up, ours warm-up, ours, naive): a
second-order meta-iteration is 10-20 s on an idle 2-core CPU, so this file
takes a few minutes there. On a shared machine the load average (printed)
moves single rounds by tens of percent: compare ratios from the same run only.

Run: pytest benchmarks/bench_train.py --benchmark-only -s
(MZSR_FAST_TRAIN_DATA: image folder; default ../shared/data/train, else synthetic images)
"""
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mzsr_fast.gaussian import gaussian_kernel
from mzsr_fast.model import MZSRNet, functional_forward
from mzsr_fast.resize import resize_weights
from mzsr_fast.train import MetaLearner, MetatrainConfig, Pretrainer, PretrainConfig
from mzsr_fast.train.data import TaskBatch

# -- the straightforward implementation ------------------------------------

def numpy_imresize(image: np.ndarray, scale: float, out_shape) -> np.ndarray:
    """MATLAB bicubic resize of an [H, W, C] float64 array, numpy only (per-axis tap tables)."""
    out = image
    for axis in (0, 1):
        index, weight = resize_weights(out.shape[axis], out_shape[axis], scale, True)
        taken = np.take(out, index, axis=axis)  # axis becomes (out, taps)
        if axis == 0:
            out = np.einsum("otwc,ot->owc", taken, weight)
        else:
            out = np.einsum("hotc,ot->hoc", taken, weight)
    return out


def reference_task_data(batch: TaskBatch, kernel_size: int = 15):
    """The reference pipeline: per patch, scipy correlate + subsample + numpy bicubic up, then to torch."""
    from scipy.ndimage import correlate

    inputs = []
    for t in range(batch.hr.shape[0]):
        kernel = gaussian_kernel(batch.theta[t], batch.lambda1[t], batch.lambda2[t], kernel_size).numpy()
        scale = int(batch.scales[t])
        task = []
        for patch in batch.hr[t].numpy():
            hr = patch.transpose(1, 2, 0).astype(np.float64) / 255
            blurred = np.stack([correlate(hr[..., c], kernel, mode="reflect") for c in range(3)], -1)
            lr = np.clip(blurred[::scale, ::scale], 0, 1)
            task.append(numpy_imresize(lr, scale, hr.shape[:2]).transpose(2, 0, 1))
        inputs.append(np.stack(task))
    inputs = torch.from_numpy(np.stack(inputs)).float()
    return inputs, batch.hr.float() / 255


def naive_meta_step(model, optimizer, batch, steps=5, alpha=0.01, order=2, task_batch=8, weights=None):
    """One meta-iteration written the plain way: a Python loop over tasks and steps."""
    inputs, targets = reference_task_data(batch)
    names = [n for n, _ in model.named_parameters()]
    weights = weights if weights is not None else [1.0 / steps] * steps
    tasks = inputs.shape[0]
    optimizer.zero_grad()
    total = 0.0
    for t in range(tasks):
        xs, ys = inputs[t, :task_batch], targets[t, :task_batch]
        xq, yq = inputs[t, task_batch:], targets[t, task_batch:]
        fast = list(model.parameters())
        for k in range(steps):
            loss = F.l1_loss(functional_forward(dict(zip(names, fast)), xs), ys)
            grads = torch.autograd.grad(loss, fast, create_graph=order == 2)
            fast = [w - alpha * g for w, g in zip(fast, grads)]
            total = total + weights[k] * F.l1_loss(functional_forward(dict(zip(names, fast)), xq), yq) / tasks
    total.backward()
    optimizer.step()
    return total.item()


def naive_pretrain_step(model, optimizer, hr_uint8, scale=2):
    pairs = []
    for patch in hr_uint8.numpy():
        hr = patch.transpose(1, 2, 0).astype(np.float64) / 255
        lr = np.clip(numpy_imresize(hr, 1 / scale, [-(-s // scale) for s in hr.shape[:2]]), 0, 1)
        pairs.append(numpy_imresize(lr, scale, hr.shape[:2]).transpose(2, 0, 1))
    x = torch.from_numpy(np.stack(pairs)).float()
    y = hr_uint8.float() / 255
    loss = F.l1_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


# -- fixtures ----------------------------------------------------------------

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "train"
    folder = Path(os.environ.get("MZSR_FAST_TRAIN_DATA", default))
    if folder.is_dir():
        return str(folder)
    from PIL import Image
    root = tmp_path_factory.mktemp("bench_images")
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return str(root)


def _once(fn, warmup=1):
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- benchmarks --------------------------------------------------------------

@pytest.mark.parametrize("order", [2, 1])
def test_meta_iteration(benchmark, data_dir, tmp_path, order):
    torch.manual_seed(0)
    config = MetatrainConfig(data_dir, str(tmp_path / "run"), order=order, progress=False)
    learner = MetaLearner(config)
    model = MZSRNet()
    model.load_state_dict(learner.model.state_dict())
    optimizer = torch.optim.Adam(model.parameters(), lr=config.meta_lr)
    step = iter(range(10 ** 6))

    def naive():
        return naive_meta_step(model, optimizer, learner.batch(next(step)), order=order)

    # naive warm-up, ours warm-up, ours, naive: both sides see the same drift of a shared machine's load
    naive()
    benchmark.pedantic(lambda: learner.train_step(learner.batch(next(step)), 0), rounds=1, iterations=1,
                       warmup_rounds=1)
    ours = benchmark.stats.stats.min
    naive_s = _once(naive, warmup=0)
    data_ours = _once(lambda: learner.task_sets(learner.batch(0)), warmup=1)
    data_naive = _once(lambda: reference_task_data(learner.batch(0)), warmup=0)
    benchmark.extra_info.update({"order": order, "naive_s": naive_s, "speedup_vs_naive": naive_s / ours,
                                 "task_data_ours_s": data_ours, "task_data_naive_s": data_naive,
                                 "threads": torch.get_num_threads(), "load": os.getloadavg()[0]})
    print(f"\nmeta-iteration, order {order}, 5 tasks x 5 steps, 8+8 patches of 64: ours {ours:.2f} s "
          f"({1 / ours:.3f} it/s), naive {naive_s:.2f} s ({1 / naive_s:.3f} it/s), speedup {naive_s / ours:.2f}x; "
          f"task data: ours {data_ours * 1e3:.0f} ms, numpy/scipy {data_naive * 1e3:.0f} ms "
          f"[{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}]")


def test_pretrain_iteration(benchmark, data_dir, tmp_path):
    torch.manual_seed(0)
    trainer = Pretrainer(PretrainConfig(data_dir, str(tmp_path / "run"), progress=False))
    step = iter(range(10 ** 6))
    benchmark.pedantic(lambda: trainer.train_step(trainer.batch(next(step)), 0), rounds=3, iterations=1,
                       warmup_rounds=1)
    ours = benchmark.stats.stats.min
    model = MZSRNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=4e-4)
    naive = min(_once(lambda: naive_pretrain_step(model, optimizer, trainer.batch(next(step))), warmup=w)
                for w in (1, 0, 0))
    benchmark.extra_info.update({"naive_s": naive, "speedup_vs_naive": naive / ours})
    print(f"\npretrain iteration, batch 32 of 96: ours {ours:.2f} s ({1 / ours:.3f} it/s), "
          f"naive {naive:.2f} s, speedup {naive / ours:.2f}x [{torch.get_num_threads()} threads, "
          f"load {os.getloadavg()[0]:.1f}]")
