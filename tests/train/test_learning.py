"""The trainers learn: loss falls over a short run on a fixed batch; the
schedules (learning rate, gradient order, multi-step loss) do what they say."""
import pytest
import torch

from mzsr_fast.train import MetaLearner, Pretrainer
from mzsr_fast.train.pretrain import learning_rate
from train_helpers import tiny_meta, tiny_pretrain


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_pretraining_loss_decreases_on_a_fixed_batch(smooth_dir, tmp_path):
    trainer = Pretrainer(tiny_pretrain(smooth_dir, tmp_path, lr=3e-4, batch_size=8))
    batch = trainer.batch(0)
    losses = [float(trainer.train_step(batch, step)["loss"]) for step in range(25)]
    assert losses[-1] < 0.85 * losses[0], losses
    assert sum(losses[-5:]) < sum(losses[:5]), losses


def test_meta_loss_decreases_on_a_fixed_batch(smooth_dir, tmp_path):
    learner = MetaLearner(tiny_meta(smooth_dir, tmp_path, meta_lr=3e-4, inner_steps=1))
    batch = learner.batch(0)
    losses = [float(learner.train_step(batch, 0)["loss"]) for _ in range(12)]
    assert losses[-1] < 0.9 * losses[0], losses
    assert sum(losses[-3:]) < sum(losses[:3]), losses


def test_inner_steps_help_on_the_query_set(image_dir, tmp_path):
    # with a sensible inner rate, the query loss after step 2 is below that after step 1
    learner = MetaLearner(tiny_meta(image_dir, tmp_path, inner_lr=0.05))
    stats = learner.compute_gradients(learner.batch(0), 0)
    assert float(stats["query_loss_2"]) < float(stats["query_loss_1"])
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in learner.model.parameters())


def test_learning_rate_schedule():
    assert learning_rate(0) == 4e-4
    assert learning_rate(99_999) == 4e-4
    assert learning_rate(100_000) == 2e-4
    assert learning_rate(200_000) == 1e-4
    assert learning_rate(900_000) == 1e-4  # floor


def test_gradient_order_switch(image_dir, tmp_path):
    learner = MetaLearner(tiny_meta(image_dir, tmp_path, first_order_until=10))
    assert [learner.order_at(s) for s in (0, 9, 10, 11)] == [1, 1, 2, 2]
    assert MetaLearner(tiny_meta(image_dir, tmp_path)).order_at(0) == 2  # second order from the start
    assert MetaLearner(tiny_meta(image_dir, tmp_path, order=1)).order_at(10 ** 6) == 1


def test_first_and_second_order_meta_gradients_differ(image_dir, tmp_path):
    grads = []
    for order in (1, 2):
        learner = MetaLearner(tiny_meta(image_dir, tmp_path, order=order, inner_lr=0.05))
        learner.compute_gradients(learner.batch(0), 0)
        grads.append(torch.cat([p.grad.flatten() for p in learner.model.parameters()]))
    assert not torch.allclose(grads[0], grads[1])
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.5


def test_multi_step_loss_weights_anneal(image_dir, tmp_path):
    learner = MetaLearner(tiny_meta(image_dir, tmp_path, inner_steps=5))
    start, later, settled = learner.loss_weights(0), learner.loss_weights(1000), learner.loss_weights(10_000)
    torch.testing.assert_close(start, torch.full((5,), 0.2))
    torch.testing.assert_close(later[:4], torch.full((4,), 0.2 - 1000 * 6e-5), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(settled, torch.tensor([0.006] * 4 + [0.976]), rtol=1e-4, atol=1e-6)
    assert float(later[4]) > 0.2
    last_only = MetaLearner(tiny_meta(image_dir, tmp_path, inner_steps=5, msl=False)).loss_weights(0)
    assert last_only.tolist() == [0, 0, 0, 0, 1]


def test_learnable_inner_rates_are_trained(image_dir, tmp_path):
    learner = MetaLearner(tiny_meta(image_dir, tmp_path, learn_inner_lr=True))
    before = learner.inner_lr.detach().clone()
    learner.train_step(learner.batch(0), 0)
    assert learner.inner_lr.shape == (2, 16)
    assert not torch.equal(before, learner.inner_lr.detach())


def test_learned_inner_rates_are_the_models_test_time_schedule(image_dir, tmp_path):
    """With --learn-inner-lr the saved model carries the learned table, and
    load_model / adapt / validation read it back (steps x parameter tensors)."""
    from mzsr_fast.pretrained import load_model
    from mzsr_fast.train import metatrain

    config = tiny_meta(image_dir, tmp_path, learn_inner_lr=True, iterations=2)
    result = metatrain(config)
    _, info = load_model(result.latest)
    assert len(info.schedule) == 2 and all(len(row) == 16 for row in info.schedule)
    learner = MetaLearner(tiny_meta(image_dir, tmp_path / "again", learn_inner_lr=True))
    learner.inner_lr.data.uniform_(0.001, 0.02)
    learner.inner_lr.data[0, 3] = -0.5  # a negative learned rate is used as 0
    schedule = learner.model_info().schedule
    assert schedule[0][3] == 0.0
    assert schedule[1][5] == pytest.approx(float(learner.inner_lr[1, 5].detach()))


def test_learned_rates_can_start_from_the_init_models_schedule(image_dir, tmp_path):
    from mzsr_fast.pretrained import ModelInfo, load_model, save_model

    rows = (tuple(0.001 * (i + 1) for i in range(16)), tuple(0.002 * (i + 1) for i in range(16)))
    net = load_model("direct_x2")[0]
    save_model(tmp_path / "init.safetensors", net, ModelInfo("init", own_schedule=rows))
    learner = MetaLearner(tiny_meta(image_dir, tmp_path / "run", init=str(tmp_path / "init.safetensors"),
                                    learn_inner_lr=True, inner_lr_from_init=True, inner_steps=3))
    expected = torch.tensor([rows[0], rows[1], rows[1]])  # the last row repeats
    torch.testing.assert_close(learner.inner_lr.detach(), expected)
    plain = MetaLearner(tiny_meta(image_dir, tmp_path / "plain", init=str(tmp_path / "init.safetensors"),
                                  learn_inner_lr=True, inner_lr=0.03))
    assert bool((plain.inner_lr.detach() == 0.03).all())
    with pytest.raises(ValueError, match="inner_lr_from_init: .* needs learn_inner_lr"):
        MetaLearner(tiny_meta(image_dir, tmp_path / "bad", inner_lr_from_init=True))


def test_adapt_loss_is_the_inner_steps_loss_and_the_models(image_dir, val_dir, tmp_path, monkeypatch):
    """--adapt-loss: the inner loop descends it on the support set, the query
    loss stays L1, the model file (and the validation's adaptation) carry it."""
    from mzsr_fast import maml
    from mzsr_fast.pretrained import load_model
    from mzsr_fast.train import metatrain, validation

    calls = {"inner": [], "validation": []}
    inner_loop, mzsr_psnr = maml.inner_loop, validation.mzsr_psnr

    def recorded_inner_loop(*args, **kwargs):
        calls["inner"].append((kwargs["loss"], kwargs["query_loss"]))
        return inner_loop(*args, **kwargs)

    def recorded_psnr(*args, **kwargs):
        calls["validation"].append(kwargs["adapt_loss"])
        return mzsr_psnr(*args, **kwargs)

    monkeypatch.setattr(maml, "inner_loop", recorded_inner_loop)
    monkeypatch.setattr(validation, "mzsr_psnr", recorded_psnr)
    result = metatrain(tiny_meta(image_dir, tmp_path, adapt_loss="charbonnier", iterations=2, validate_every=2,
                                 val_dir=str(val_dir), val_kernels=("g_d_2.0",), val_steps=(1,)))
    assert calls["inner"] == [("charbonnier", "l1")] * 2 and calls["validation"] == ["charbonnier"]
    assert load_model(result.latest)[1].adapt_loss == "charbonnier"
    learner = MetaLearner(tiny_meta(image_dir, tmp_path / "l1"))
    assert learner.model_info().adapt_loss == "l1"


def test_task_kernels_reach_down_to_the_smallest_variance(image_dir, tmp_path):
    learner = MetaLearner(tiny_meta(image_dir, tmp_path, meta_batch=64, kernel_min_variance=0.2))
    batch = learner.batch(0)
    assert float(batch.lambda2.min()) >= 0.2 and float(batch.lambda2.min()) < 1
    paper = MetaLearner(tiny_meta(image_dir, tmp_path / "paper", meta_batch=64)).batch(0)
    assert float(paper.lambda2.min()) >= 1
    assert torch.equal(paper.theta, batch.theta)  # the same draws, mapped to another range


def test_msl_decay_zero_keeps_the_first_steps_loss_in_the_objective(image_dir, tmp_path):
    learner = MetaLearner(tiny_meta(image_dir, tmp_path, inner_steps=4, msl_decay=0.0).check())
    assert learner.loss_weights(100_000).tolist() == [0.25] * 4
    default = MetaLearner(tiny_meta(image_dir, tmp_path / "default", inner_steps=4))
    assert default.loss_weights(100_000)[0] < 0.25 / 10


@pytest.mark.parametrize("setting,match", [
    (dict(adapt_loss="L2"), r"adapt_loss: expected one of \('l1', 'charbonnier', 'mse'\), got 'L2'"),
    (dict(kernel_min_variance=0), "kernel_min_variance: expected a positive number, got 0"),
    (dict(msl_decay=-1e-5), "msl_decay: expected a number >= 0, got -1e-05"),
    (dict(msl_decay=float("nan")), "msl_decay: expected a number >= 0, got nan"),
    (dict(kernel_min_variance=5.0), r"kernel_min_variance: expected less than 5 \(2.5 x the smallest scale of "
                                    r"direct_x2\), got 5.0"),
])
def test_bad_adaptation_settings_are_refused(image_dir, tmp_path, setting, match):
    with pytest.raises(ValueError, match=match):
        tiny_meta(image_dir, tmp_path, **setting).check()


@pytest.mark.parametrize("order", [1, 2])
def test_cpu_bf16_meta_gradient_is_close_to_fp32(image_dir, tmp_path, order):
    """--amp on the CPU: the same iteration's meta-gradient in bf16 autocast and
    in fp32. bf16 keeps 8 mantissa bits (relative rounding 2^-9 per value), and
    the convolutions accumulate in fp32, so the gradient agrees to a few
    percent of its norm, never to fp32 precision."""
    grads = {}
    for amp in (False, True):
        learner = MetaLearner(tiny_meta(image_dir, tmp_path / str(amp), amp=amp, order=order, inner_steps=2))
        learner.compute_gradients(learner.batch(0), 0)
        grads[amp] = torch.cat([p.grad.flatten() for p in learner.model.parameters()])
    assert torch.isfinite(grads[True]).all()
    relative = (grads[True] - grads[False]).norm() / grads[False].norm()
    assert 0 < relative < 0.05


def test_cpu_bf16_pretraining_step(smooth_dir, tmp_path):
    learner = Pretrainer(tiny_pretrain(smooth_dir, tmp_path, amp=True))
    stats = learner.train_step(learner.batch(0), 0)
    assert torch.isfinite(stats["loss"])
