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
difference is the task-data pipeline and the inner loop. Rows of the groups
"training meta-iteration order N", "training task data" and "training pretrain
iteration" ("ours" and "naive"); ours's speed-up over the naive way is printed
after pytest-benchmark's table (timing.py). A second-order meta-iteration is
10-20 s on an idle 2-core CPU (one warm-up and one timed round each), so this
file takes a few minutes there. On a shared machine the load (extra_info["load"])
moves single rounds by tens of percent; `--benchmark-timer=time.process_time`
times CPU time instead.

Run: pytest benchmarks/bench_train.py --benchmark-only -s
(MZSR_FAST_TRAIN_DATA: image folder; default ../shared/data/train, else synthetic images)
"""
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timing import row

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


@pytest.fixture(scope="module")
def learners(data_dir, tmp_path_factory):
    """order -> a MetaLearner at the paper's defaults (built once per order)."""
    made = {}

    def get(order: int) -> MetaLearner:
        if order not in made:
            torch.manual_seed(0)
            out = tmp_path_factory.mktemp(f"meta_order{order}")
            made[order] = MetaLearner(MetatrainConfig(data_dir, str(out), order=order, progress=False))
        return made[order]
    return get


@pytest.fixture(scope="module")
def pretrainer(data_dir, tmp_path_factory):
    torch.manual_seed(0)
    return Pretrainer(PretrainConfig(data_dir, str(tmp_path_factory.mktemp("pretrain")), progress=False))


def _row(benchmark, group: str, impl: str) -> None:
    """impl ("ours" or "naive") as a row of group; ours is compared with naive."""
    row(benchmark, group, impl, against=("naive",) if impl == "ours" else ())
    benchmark.extra_info.update({"threads": torch.get_num_threads(), "load": os.getloadavg()[0]})


# -- benchmarks --------------------------------------------------------------

@pytest.mark.parametrize("impl", ["ours", "naive"])
@pytest.mark.parametrize("order", [2, 1])
def test_meta_iteration(benchmark, learners, order, impl):
    learner = learners(order)
    step = iter(range(10 ** 6))
    if impl == "ours":
        fn = lambda: learner.train_step(learner.batch(next(step)), 0)  # noqa: E731
    else:
        model = MZSRNet()
        model.load_state_dict(learner.model.state_dict())
        optimizer = torch.optim.Adam(model.parameters(), lr=learner.config.meta_lr)
        fn = lambda: naive_meta_step(model, optimizer, learner.batch(next(step)), order=order)  # noqa: E731
    _row(benchmark, f"training meta-iteration order {order}", impl)
    benchmark.pedantic(fn, rounds=1, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("impl", ["ours", "naive"])
def test_meta_task_data(benchmark, learners, impl):
    """A meta-iteration's task data alone: ours, or numpy/scipy one patch at a time."""
    learner = learners(2)
    if impl == "ours":
        fn = lambda: learner.task_sets(learner.batch(0))  # noqa: E731
    else:
        fn = lambda: reference_task_data(learner.batch(0))  # noqa: E731
    _row(benchmark, "training task data", impl)
    benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("impl", ["ours", "naive"])
def test_pretrain_iteration(benchmark, pretrainer, impl):
    step = iter(range(10 ** 6))
    if impl == "ours":
        fn = lambda: pretrainer.train_step(pretrainer.batch(next(step)), 0)  # noqa: E731
    else:
        model = MZSRNet()
        optimizer = torch.optim.Adam(model.parameters(), lr=4e-4)
        fn = lambda: naive_pretrain_step(model, optimizer, pretrainer.batch(next(step)))  # noqa: E731
    _row(benchmark, "training pretrain iteration", impl)
    benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=1)
