"""LR schedules: every step against the original's formulas written out plainly, with real optimizers stepping."""
from __future__ import annotations

import io
import math
import warnings

import pytest
import torch
from torch import nn

from input_checks import InputError
from optimization import Lamb
from schedulers import (
    ConstantWarmUpScheduler,
    CosineWarmUpScheduler,
    LinearWarmUpScheduler,
    PolyWarmUpScheduler,
    build_scheduler,
)

BASE_LRS = (6e-3, 1e-3)
TOTAL = 100
WARMUP = 0.2


# The formulas, written out independently of schedulers.py (p = progress, w = warm-up proportion).
def poly(p, w):
    return p / w if p < w else (0.0 if p >= 1 else (1 - p) ** 0.5)


def linear(p, w):
    return p / w if p < w else max((p - 1) / (w - 1), 0.0)


def constant(p, w):
    return p / w if p < w else 1.0


def cosine(p, w):
    return p / w if p < w else (0.0 if p >= 1 else 0.5 * (1 + math.cos(math.pi * (p - w) / (1 - w))))


CASES = [(PolyWarmUpScheduler, poly), (LinearWarmUpScheduler, linear),
         (ConstantWarmUpScheduler, constant), (CosineWarmUpScheduler, cosine)]


def lamb_with_two_groups() -> tuple[list[nn.Parameter], Lamb]:
    params = [nn.Parameter(torch.randn(4, 4)), nn.Parameter(torch.randn(4))]
    groups = [{"params": [params[0]], "lr": BASE_LRS[0], "weight_decay": 0.01},
              {"params": [params[1]], "lr": BASE_LRS[1], "weight_decay": 0.0}]
    return params, Lamb(groups, lr=BASE_LRS[0])


def one_update(params, optimizer, bad: bool = False) -> None:
    for p in params:
        p.grad = torch.randn_like(p)
    if bad:
        params[0].grad[0, 0] = math.inf
    optimizer.step()
    optimizer.settle()  # LAMB skips on the device; the host's count follows when it reads (the Trainer: log steps)


def lrs_used_per_update(scheduler_cls, n_updates):
    """Lr of each group during the k-th update, in the original's order: scheduler.step() then optimizer.step()."""
    params, opt = lamb_with_two_groups()
    scheduler = scheduler_cls(opt, warmup=WARMUP, total_steps=TOTAL)
    used = []
    for _ in range(n_updates):
        scheduler.step()
        used.append([g["lr"] for g in opt.param_groups])
        one_update(params, opt)
    return used, scheduler


@pytest.mark.parametrize("scheduler_cls,formula", CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_kth_update_uses_progress_k_over_total(scheduler_cls, formula):
    used, scheduler = lrs_used_per_update(scheduler_cls, TOTAL + 3)
    for k, lrs in enumerate(used, start=1):
        expected = [base * formula(k / TOTAL, WARMUP) for base in BASE_LRS]
        assert lrs == pytest.approx(expected, rel=1e-12, abs=1e-15), f"update {k}"
    assert scheduler.get_last_lr() == pytest.approx(used[-1])


def test_poly_schedule_drops_after_warmup_and_ends_at_zero():
    used, _ = lrs_used_per_update(PolyWarmUpScheduler, TOTAL + 2)
    base = BASE_LRS[0]
    at = {k: lrs[0] for k, lrs in enumerate(used, start=1)}
    assert at[1] == pytest.approx(base * 0.01 / 0.2)
    assert at[19] == pytest.approx(base * 0.95)  # p = w − ε: almost the base lr
    assert at[20] == pytest.approx(base * math.sqrt(0.8))  # p = w: the discontinuity of the original
    assert at[21] == pytest.approx(base * math.sqrt(0.79))
    assert at[99] == pytest.approx(base * math.sqrt(0.01))
    assert at[100] == 0.0 and at[101] == 0.0 and at[102] == 0.0


def test_cosine_is_the_corrected_half_cosine():
    used, _ = lrs_used_per_update(CosineWarmUpScheduler, TOTAL)
    base = BASE_LRS[0]
    assert used[19][0] == pytest.approx(base)  # k = 20: end of warm-up, cos(0)
    assert used[59][0] == pytest.approx(base / 2)  # k = 60: halfway through the decay
    assert used[99][0] == pytest.approx(0.0, abs=1e-18)  # k = 100: cos(π)


def test_linear_schedule_warm_up_fraction_zero_and_one():
    _, opt = lamb_with_two_groups()
    no_warmup = LinearWarmUpScheduler(opt, warmup=0.0, total_steps=10)
    assert opt.param_groups[0]["lr"] == pytest.approx(BASE_LRS[0])  # position 0, p = 0: full lr
    no_warmup.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(BASE_LRS[0] * 0.9)
    _, opt = lamb_with_two_groups()
    all_warmup = LinearWarmUpScheduler(opt, warmup=1.0, total_steps=10)
    for _ in range(9):
        all_warmup.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(BASE_LRS[0] * 0.9)
    all_warmup.step()
    assert opt.param_groups[0]["lr"] == 0.0


def test_poly_follows_the_optimizer_counter_and_skipped_updates_do_not_advance_it():
    params, opt = lamb_with_two_groups()
    poly_sched = PolyWarmUpScheduler(opt, warmup=WARMUP, total_steps=TOTAL)
    linear_params, linear_opt = lamb_with_two_groups()
    linear_sched = LinearWarmUpScheduler(linear_opt, warmup=WARMUP, total_steps=TOTAL)
    skip_at = {3, 4, 8}  # calls on which the update fails (overflow)
    successful = 0
    for call in range(1, 13):
        poly_sched.step()
        linear_sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(BASE_LRS[0] * poly((successful + 1) / TOTAL, WARMUP))
        assert linear_opt.param_groups[0]["lr"] == pytest.approx(BASE_LRS[0] * linear(call / TOTAL, WARMUP))
        one_update(params, opt, bad=call in skip_at)
        one_update(linear_params, linear_opt, bad=call in skip_at)
        successful += call not in skip_at
        assert opt.param_groups[0]["step"] == successful


def test_poly_with_a_real_grad_scaler_skipping_an_overflow():
    model = nn.Linear(4, 2)
    opt = Lamb(model.parameters(), lr=1e-2)
    scheduler = PolyWarmUpScheduler(opt, warmup=0.5, total_steps=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    lrs = []
    for call in range(4):
        scheduler.step()
        lrs.append(opt.param_groups[0]["lr"])
        loss = model(torch.randn(3, 4)).square().sum()
        if call == 1:
            loss = loss * math.inf  # an fp16-style overflow: GradScaler sees inf grads and skips the step
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    assert opt.param_groups[0]["step"] == 3
    assert lrs == pytest.approx([1e-2 * k / 10 / 0.5 for k in (1, 2, 2, 3)])


def test_poly_reads_the_per_parameter_step_of_torch_adamw():
    model = nn.Linear(3, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = PolyWarmUpScheduler(opt, warmup=0.1, total_steps=10)
    for k in range(1, 6):
        scheduler.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * poly(k / 10, 0.1))
        model(torch.randn(2, 3)).sum().backward()
        opt.step()


def test_scheduler_before_optimizer_is_not_warned_about():
    params, opt = lamb_with_two_groups()
    scheduler = LinearWarmUpScheduler(opt, warmup=WARMUP, total_steps=TOTAL)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            scheduler.step()
            one_update(params, opt)


def save_and_load(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("scheduler_cls", [cls for cls, _ in CASES], ids=lambda c: c.__name__)
def test_state_dict_round_trip_continues_the_schedule(scheduler_cls):
    uninterrupted, _ = lrs_used_per_update(scheduler_cls, 30)

    params, opt = lamb_with_two_groups()
    scheduler = scheduler_cls(opt, warmup=WARMUP, total_steps=TOTAL)
    for _ in range(12):
        scheduler.step()
        one_update(params, opt)
    saved = save_and_load({"optimizer": opt.state_dict(), "scheduler": scheduler.state_dict()})

    params2, opt2 = lamb_with_two_groups()
    scheduler2 = scheduler_cls(opt2, warmup=WARMUP, total_steps=TOTAL)
    opt2.load_state_dict(saved["optimizer"])
    scheduler2.load_state_dict(saved["scheduler"])
    resumed = []
    for _ in range(18):
        scheduler2.step()
        resumed.append([g["lr"] for g in opt2.param_groups])
        one_update(params2, opt2)
    assert resumed == uninterrupted[12:]


def test_build_scheduler_names_and_input_errors():
    _, opt = lamb_with_two_groups()
    assert type(build_scheduler("poly", opt, 0.1, 10)) is PolyWarmUpScheduler
    assert type(build_scheduler("CosineWarmUpScheduler", opt, 0.1, 10)) is CosineWarmUpScheduler
    assert type(build_scheduler("linear", opt, 0.1, 10)) is LinearWarmUpScheduler
    assert type(build_scheduler("constant", opt, 0.1, 10)) is ConstantWarmUpScheduler
    with pytest.raises(InputError, match="step"):
        build_scheduler("step", opt, 0.1, 10)
    with pytest.raises(InputError, match="warm-up"):
        PolyWarmUpScheduler(opt, warmup=2.0, total_steps=10)
    with pytest.raises(InputError, match="total_steps"):
        LinearWarmUpScheduler(opt, warmup=0.1, total_steps=0)
