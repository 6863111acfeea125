"""training.py: loss scaling, the DDP no-sync context (also under torch.compile), progress, cache folders."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import record_allreduces
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import training
from distributed import DistEnv


def _overflowing_step(scaler: torch.amp.GradScaler) -> tuple[bool, float]:
    """One scaled backward whose gradient is inf: (was the update applied, the scale afterwards)."""
    param = nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scaler.scale((param * torch.tensor([1.0, float("inf"), 1.0])).sum()).backward()
    scaler.step(optimizer)
    scaler.update()
    return bool(torch.equal(param.detach(), torch.ones(3))) is False, scaler.get_scale()


def test_static_loss_scale_never_changes_and_skips_overflow():
    scaler = training.make_grad_scaler("fp16", torch.device("cpu"), loss_scale=128.0)
    applied, scale = _overflowing_step(scaler)
    assert not applied and scale == 128.0
    param = nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([param], lr=1.0)
    for _ in range(3):  # clean steps: a dynamic scaler would not grow this soon either; a static one never does
        scaler.scale(param.sum()).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
    assert scaler.get_scale() == 128.0
    assert torch.allclose(param.detach(), torch.full((2,), -2.0))  # gradients were unscaled: 3 steps of -1


def test_dynamic_loss_scale_backs_off_from_its_initial_value():
    scaler = training.make_grad_scaler("fp16", torch.device("cpu"), loss_scale=0.0, init_scale=2.0**20)
    applied, scale = _overflowing_step(scaler)
    assert not applied and scale == 2.0**19


def test_scaler_is_a_pass_through_without_fp16():
    scaler = training.make_grad_scaler("bf16", torch.device("cpu"), loss_scale=128.0)
    assert not scaler.is_enabled()
    loss = torch.tensor(3.0)
    assert scaler.scale(loss) is loss


# --------------------------------------------------------------------------------------------
# The one optimizer step
# --------------------------------------------------------------------------------------------


def _optimizer(kind: str, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    import optimization

    if kind == "lamb":
        return optimization.Lamb(params, lr=0.1)
    if kind == "bertadam":
        return optimization.BertAdam(params, lr=0.1)
    return torch.optim.AdamW(params, lr=0.1)


@pytest.mark.parametrize("kind", ["adamw", "bertadam", "lamb"])
def test_stepper_says_whether_an_fp16_update_was_applied(kind):
    """An overflowing micro-batch: the scaler skips the update (False, weights unchanged); the next clean
    update is applied (True), whether the optimizer counts its updates (LAMB) or not."""
    param = nn.Parameter(torch.ones(3))
    stepper = training.Stepper(param, _optimizer(kind, [param]), None, "fp16", torch.device("cpu"), loss_scale=128.0)
    overflow = torch.tensor([1.0, float("inf"), 1.0])
    for expected, factor in ((False, overflow), (True, torch.ones(3)), (False, overflow), (True, torch.ones(3))):
        before = param.detach().clone()
        stepper.accumulate(factor, lambda p, f: (p * f).sum())
        assert stepper.update() is expected
        assert torch.equal(param.detach(), before) is not expected
        assert param.grad is None  # zero_grad(set_to_none=True) after every update, applied or not


def test_stepper_lamb_skip_without_a_scaler_is_not_applied():
    """fp32: no scaler; LAMB itself skips a step whose gradient norm is not finite on the device (the host
    call does not wait for it) and says so when the host asks."""
    param = nn.Parameter(torch.ones(3))
    optimizer = _optimizer("lamb", [param])
    stepper = training.Stepper(param, optimizer, None, "fp32", torch.device("cpu"))
    stepper.accumulate(torch.tensor([1.0, float("nan"), 1.0]), lambda p, f: (p * f).sum())
    stepper.update()
    assert torch.equal(param.detach(), torch.ones(3))
    assert optimizer.settle() == 1 and optimizer.last_step_skipped and optimizer.param_groups[0]["step"] == 0


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # the original's order
def test_stepper_order_allreduce_then_unscale_clip_scheduler_step():
    """The all-reduce hook sees the loss-scaled sum of the weighted micro-batches; clipping sees unscaled
    gradients; the scheduler has set the LR before the optimizer uses it."""
    param = nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 if step else 1.0)  # 0.5 after a step
    seen: list[torch.Tensor] = []
    stepper = training.Stepper(param, optimizer, scheduler, "fp16", torch.device("cpu"), clip_grad_norm=1.0,
                               loss_scale=8.0, allreduce=lambda: seen.append(param.grad.clone()))
    for micro in range(2):
        stepper.accumulate(torch.tensor([3.0, 4.0]), lambda p, g: (p * g).sum(), weight=0.5, sync=micro == 1)
    assert stepper.update() is True
    assert torch.equal(seen[0], torch.tensor([24.0, 32.0]))  # 8 × (0.5 + 0.5) × [3, 4], before unscaling
    # unscaled [3, 4] (norm 5) clipped to norm 1, times the scheduler's 0.5 set before this step
    assert torch.allclose(param.detach(), torch.tensor([-0.3, -0.4]))


# --------------------------------------------------------------------------------------------
# No-sync under DDP, eager and compiled: count the all-reduces with a DDP communication hook
# --------------------------------------------------------------------------------------------

MICRO_STEPS, ACCUMULATION = 6, 3


def _count_allreduces(rank: int, world: int, init_file: str, compiled: bool, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        ddp = DistributedDataParallel(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)))
        calls = record_allreduces(ddp, world)
        model = torch.compile(ddp, backend="eager") if compiled else ddp
        for step in range(MICRO_STEPS):
            x = torch.full((2, 4), float(rank + step))
            with training.gradient_sync(model, sync=(step + 1) % ACCUMULATION == 0):
                model(x).sum().backward()
        grad = ddp.module[0].weight.grad.clone()
        gathered = [torch.zeros_like(grad) for _ in range(world)]
        dist.all_gather(gathered, grad)
        out[rank] = (len(calls), isinstance(model, DistributedDataParallel),
                     all(torch.equal(g, gathered[0]) for g in gathered))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_gradients_reduced_once_per_update(tmp_path, compiled):
    """2 gloo ranks, 3 micro-batches per update, 2 updates: 2 all-reduces, also when torch.compile wraps DDP."""
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_count_allreduces, args=(2, str(tmp_path / "rendezvous"), compiled, out), nprocs=2, join=True)
        results = dict(out)
    for rank in (0, 1):
        reductions, is_ddp_instance, synced = results[rank]
        assert reductions == MICRO_STEPS // ACCUMULATION, results
        assert synced  # the last micro-batch of each update did reduce: both ranks hold the same gradients
        assert is_ddp_instance is not compiled  # the compiled wrapper hides DDP from isinstance checks


def test_ddp_module_found_through_compile_and_absent_without_ddp():
    plain = nn.Linear(2, 2)
    assert training.ddp_module(torch.compile(plain, backend="eager")) is None
    assert training.ddp_module(plain) is None
    assert isinstance(training.gradient_sync(plain, sync=False), type(training.gradient_sync(plain, sync=True)))


def test_wrap_ddp_leaves_a_single_process_model_alone():
    model = nn.Linear(2, 2)
    assert training.wrap_ddp(model, DistEnv()) is model


# --------------------------------------------------------------------------------------------
# Feature-cache folder and progress bar
# --------------------------------------------------------------------------------------------


def test_feature_cache_dir_default_given_and_unwritable(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    assert training.feature_cache_dir(None, data, skip_cache=False) == data
    given = tmp_path / "cache" / "nested"
    assert training.feature_cache_dir(str(given), data, skip_cache=False) == given and given.is_dir()
    if os.geteuid() != 0:  # root may write anywhere
        data.chmod(0o500)
        try:
            assert training.feature_cache_dir(None, data, skip_cache=False) is None
            assert "not writable" in capsys.readouterr().out
            assert training.feature_cache_dir(None, data, skip_cache=True) == data  # reading a cache is fine
        finally:
            data.chmod(0o700)


def test_progress_bar_disabled_passes_the_iterable_through():
    items = [1, 2, 3]
    assert training.progress_bar(items, enabled=False, desc="x") is items
    assert training.progress_bar(enabled=False, desc="x", total=3) is None
    bar = training.progress_bar(enabled=True, desc="x", total=3)
    bar.update(3)
    assert bar.n == 3
    bar.close()
