"""LAMB, BertAdam and the parameter groups against plain float64 re-statements of the original's formulas."""
from __future__ import annotations

import importlib.util
import io
import json
import math

import pytest
import torch
from conftest import ROOT
from torch import nn

from input_checks import InputError
from optimization import (
    BertAdam,
    Lamb,
    build_finetune_optimizer,
    build_lamb,
    finetune_param_groups,
    fused_lamb_setting,
    pretraining_param_groups,
)

# A model-like parameter set: (name, shape, decayed?). LayerNorm starts at ones/zeros as in BERT, so
# the zero-norm branch of the trust ratio is exercised; the pooler never gets a gradient.
PARAM_SPECS = [
    ("embeddings.word_embeddings.weight", (12, 8), True),
    ("encoder.dense.weight", (8, 8), True),
    ("encoder.dense.bias", (8,), False),
    ("encoder.LayerNorm.weight", (8,), False),
    ("encoder.LayerNorm.bias", (8,), False),
    ("pooler.dense_act.weight", (8, 8), True),
]
NO_GRAD = "pooler.dense_act.weight"


def initial_weights() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    weights = {}
    for name, shape, _ in PARAM_SPECS:
        if name.endswith("LayerNorm.weight"):
            weights[name] = torch.ones(shape, dtype=torch.float64)
        elif name.endswith("LayerNorm.bias"):
            weights[name] = torch.zeros(shape, dtype=torch.float64)
        else:
            weights[name] = 0.02 * torch.randn(shape, generator=gen, dtype=torch.float64) + 0.05
    return weights


def gradient_steps(n_steps: int, scale: float, seed: int = 1) -> list[dict[str, torch.Tensor | None]]:
    gen = torch.Generator().manual_seed(seed)
    steps = []
    for _ in range(n_steps):
        grads = {name: scale * torch.randn(shape, generator=gen, dtype=torch.float64) for name, shape, _ in PARAM_SPECS}
        grads[NO_GRAD] = None
        steps.append(grads)
    return steps


def make_params(dtype: torch.dtype) -> dict[str, nn.Parameter]:
    return {name: nn.Parameter(w.to(dtype)) for name, w in initial_weights().items()}


def make_groups(params: dict[str, nn.Parameter], weight_decay: float) -> list[dict]:
    decayed = {name for name, _, d in PARAM_SPECS if d}
    return [{"params": [params[n] for n in params if n in decayed], "weight_decay": weight_decay},
            {"params": [params[n] for n in params if n not in decayed], "weight_decay": 0.0}]


def set_grads(params: dict[str, nn.Parameter], grads: dict[str, torch.Tensor | None]) -> None:
    for name, param in params.items():
        grad = grads[name]
        param.grad = None if grad is None else grad.to(param.dtype).clone()


def reference_lamb(weights, steps, lr, weight_decay, use_nvlamb, max_grad_norm=1.0, betas=(0.9, 0.999), eps=1e-6,
                   round_to=None):
    """NVIDIA's LAMB in float64, one tensor at a time: global-norm pre-normalisation, Adam moments with bias
    correction, decoupled weight decay, trust ratio on decayed tensors (all with use_nvlamb)."""
    beta1, beta2 = betas
    decayed = {name for name, _, d in PARAM_SPECS if d}
    w = {n: t.clone() for n, t in weights.items()}
    m = {n: torch.zeros_like(t) for n, t in w.items()}
    v = {n: torch.zeros_like(t) for n, t in w.items()}
    norms = []
    for t, grads in enumerate(steps, start=1):
        present = {n: g.to(round_to).double() if round_to else g for n, g in grads.items() if g is not None}
        global_norm = math.sqrt(sum(float((g * g).sum()) for g in present.values()))
        norms.append(global_norm)
        scale = min(1.0, max_grad_norm / global_norm)
        for name, g in present.items():
            g = g * scale
            m[name] = beta1 * m[name] + (1 - beta1) * g
            v[name] = beta2 * v[name] + (1 - beta2) * g * g
            m_hat = m[name] / (1 - beta1 ** t)
            v_hat = v[name] / (1 - beta2 ** t)
            lam = weight_decay if name in decayed else 0.0
            u = m_hat / (v_hat.sqrt() + eps) + lam * w[name]
            ratio = 1.0
            if lam != 0.0 or use_nvlamb:
                w_norm, u_norm = float(w[name].norm()), float(u.norm())
                if w_norm > 0 and u_norm > 0:
                    ratio = w_norm / u_norm
            w[name] = w[name] - lr * ratio * u
            if round_to is not None:
                w[name] = w[name].to(round_to).double()
    return w, m, v, norms


LAMB_PATHS = {"fused": dict(foreach=True, fused=True), "foreach": dict(foreach=True, fused=False),
              "per_tensor": dict(foreach=False)}


def run_lamb(dtype, steps, lr, weight_decay, use_nvlamb, path=None):
    params = make_params(dtype)
    options = LAMB_PATHS[path] if path else {}
    opt = Lamb(make_groups(params, weight_decay), lr=lr, use_nvlamb=use_nvlamb, **options)
    for grads in steps:
        set_grads(params, grads)
        opt.step()
    return params, opt


@pytest.mark.parametrize("path", list(LAMB_PATHS))
@pytest.mark.parametrize("use_nvlamb", [False, True])
@pytest.mark.parametrize("weight_decay", [0.01, 0.0])
@pytest.mark.parametrize("grad_scale", [10.0, 0.01], ids=["clipped", "unclipped"])
def test_lamb_matches_reference_formulas(grad_scale, weight_decay, use_nvlamb, path):
    steps = gradient_steps(6, grad_scale)
    lr = 0.05
    params, opt = run_lamb(torch.float32, steps, lr, weight_decay, use_nvlamb, path)
    ref_w, ref_m, ref_v, norms = reference_lamb(initial_weights(), steps, lr, weight_decay, use_nvlamb)

    assert all(n > 1.0 for n in norms) if grad_scale > 1 else all(n < 1.0 for n in norms)
    assert opt.last_grad_norm == pytest.approx(norms[-1], rel=1e-6)
    assert [g["step"] for g in opt.param_groups] == [6, 6]
    for name, param in params.items():
        torch.testing.assert_close(param.detach().double(), ref_w[name], rtol=1e-6, atol=1e-6)
        if name == NO_GRAD:
            assert param not in opt.state
            continue
        assert (param.detach().double() - initial_weights()[name]).abs().max() > 1e-3  # it really moved
        torch.testing.assert_close(opt.state[param]["exp_avg"].double(), ref_m[name], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(opt.state[param]["exp_avg_sq"].double(), ref_v[name], rtol=1e-6, atol=1e-6)


def test_lamb_picks_the_fused_path_only_where_it_applies():
    params = make_params(torch.float32)
    opt = Lamb(make_groups(params, 0.01), lr=0.05)
    assert opt._use_fused(opt.param_groups[0], list(params.values()))
    assert not opt._use_fused(opt.param_groups[0], [nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))])
    plain = Lamb(make_groups(params, 0.01), lr=0.05, grad_averaging=False)
    assert not plain._use_fused(plain.param_groups[0], list(params.values()))
    forced = Lamb(make_groups(params, 0.01), lr=0.05, foreach=False, fused=True)
    set_grads(params, gradient_steps(1, 10.0)[0])
    with pytest.raises(ValueError, match="fused LAMB needs"):
        forced.step()


@pytest.mark.parametrize(("choice", "uses_fused"), [("auto", True), ("on", True), ("off", False)])
def test_fused_lamb_choice_picks_the_path(choice, uses_fused):
    params = make_params(torch.float32)
    opt = Lamb(make_groups(params, 0.01), lr=0.05, fused=fused_lamb_setting(choice))
    assert opt._use_fused(opt.param_groups[0], list(params.values())) is uses_fused


def test_fused_lamb_rejects_unknown_choice():
    with pytest.raises(InputError, match="--fused_lamb: unknown value 'yes'"):
        fused_lamb_setting("yes")


def test_nvlamb_switch_changes_no_decay_tensors():
    """Guards the test above: the trust ratio on no-decay tensors makes a visible difference."""
    steps = gradient_steps(6, 10.0)
    plain, _, _, _ = reference_lamb(initial_weights(), steps, 0.05, 0.01, use_nvlamb=False)
    nvlamb, _, _, _ = reference_lamb(initial_weights(), steps, 0.05, 0.01, use_nvlamb=True)
    assert (plain["encoder.LayerNorm.weight"] - nvlamb["encoder.LayerNorm.weight"]).abs().max() > 1e-2
    assert not torch.equal(plain["encoder.LayerNorm.bias"], nvlamb["encoder.LayerNorm.bias"])
    torch.testing.assert_close(plain["encoder.dense.weight"], nvlamb["encoder.dense.weight"])


def test_lamb_bf16_params_keep_fp32_state_and_fp32_math():
    steps = gradient_steps(5, 10.0)
    params, opt = run_lamb(torch.bfloat16, steps, 0.05, 0.01, use_nvlamb=False)
    start = {n: w.to(torch.bfloat16).double() for n, w in initial_weights().items()}
    ref_w, ref_m, ref_v, _ = reference_lamb(start, steps, 0.05, 0.01, False, round_to=torch.bfloat16)
    for name, param in params.items():
        assert param.dtype == torch.bfloat16
        torch.testing.assert_close(param.detach().double(), ref_w[name], rtol=2 ** -7, atol=1e-6)
        if name == NO_GRAD:
            continue
        state = opt.state[param]
        assert state["exp_avg"].dtype == torch.float32 and state["exp_avg_sq"].dtype == torch.float32
        torch.testing.assert_close(state["exp_avg"].double(), ref_m[name], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(state["exp_avg_sq"].double(), ref_v[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lamb_state_dict_round_trip_resumes_exactly(dtype):
    steps = gradient_steps(6, 10.0)
    uninterrupted, _ = run_lamb(dtype, steps, 0.05, 0.01, use_nvlamb=False)

    first, opt = run_lamb(dtype, steps[:3], 0.05, 0.01, use_nvlamb=False)
    buffer = io.BytesIO()
    torch.save({"params": {n: p.detach() for n, p in first.items()}, "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed = {n: nn.Parameter(t.clone()) for n, t in saved["params"].items()}
    opt2 = Lamb(make_groups(resumed, 0.01), lr=0.05)
    opt2.load_state_dict(saved["optimizer"])
    assert [g["step"] for g in opt2.param_groups] == [3, 3]
    assert all(s["exp_avg"].dtype == torch.float32 for s in opt2.state.values())
    for grads in steps[3:]:
        set_grads(resumed, grads)
        opt2.step()
    for name in uninterrupted:
        assert torch.equal(resumed[name], uninterrupted[name]), name


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_lamb_non_finite_gradient_leaves_everything_untouched(bad):
    steps = gradient_steps(3, 10.0)
    params, opt = run_lamb(torch.float32, steps[:1], 0.05, 0.01, use_nvlamb=False)
    before_params = {n: p.detach().clone() for n, p in params.items()}
    before_state = {n: {k: v.clone() for k, v in opt.state[p].items()} for n, p in params.items() if p in opt.state}

    broken = dict(steps[1])
    broken["encoder.dense.bias"] = broken["encoder.dense.bias"].clone()
    broken["encoder.dense.bias"][3] = bad
    set_grads(params, broken)
    opt.step()

    assert opt.last_step_skipped and opt.skipped_steps == 1
    assert [g["step"] for g in opt.param_groups] == [1, 1]
    for name, param in params.items():
        assert torch.equal(param, before_params[name])
        for key, value in before_state.get(name, {}).items():
            assert torch.equal(opt.state[param][key], value)

    set_grads(params, steps[1])  # a clean step afterwards proceeds as if the bad one never happened
    opt.step()
    assert not opt.last_step_skipped
    ref_w, _, _, _ = reference_lamb(initial_weights(), steps[:2], 0.05, 0.01, False)
    for name, param in params.items():
        torch.testing.assert_close(param.detach().double(), ref_w[name], rtol=1e-6, atol=1e-6)


def test_lamb_step_counter_is_per_group_and_drives_bias_correction():
    params = make_params(torch.float32)
    opt = Lamb(make_groups(params, 0.01), lr=0.1)
    assert [g["step"] for g in opt.param_groups] == [0, 0]
    set_grads(params, gradient_steps(1, 0.01)[0])
    opt.step()
    # t = 1: m̂ = ĝ and v̂ = ĝ², so a no-decay tensor moves by lr·ĝ/(|ĝ| + eps) ≈ lr·sign(g).
    bias = params["encoder.dense.bias"]
    grad = bias.grad
    expected = initial_weights()["encoder.dense.bias"].float() - 0.1 * grad / (grad.abs() + 1e-6)
    torch.testing.assert_close(bias.detach(), expected, rtol=1e-6, atol=1e-6)


def test_build_lamb_falls_back_to_our_lamb_without_apex():
    if importlib.util.find_spec("apex") is not None:
        pytest.skip("apex is installed here; the fallback is not reachable")
    params = make_params(torch.float32)
    opt = build_lamb(make_groups(params, 0.01), lr=0.01, use_apex=True, use_nvlamb=True)
    assert isinstance(opt, Lamb) and opt.defaults["use_nvlamb"] is True


# --------------------------------------------------------------------------------------------
# BertAdam
# --------------------------------------------------------------------------------------------


def reference_bertadam(weights, steps, lr, warmup, t_total, weight_decay, b1=0.9, b2=0.999, e=1e-6, max_norm=1.0):
    """The original's BertAdam in float64: per-tensor clip, no bias correction, schedule on the pre-update count."""
    decayed = {name for name, _, d in PARAM_SPECS if d}
    w = {n: t.clone() for n, t in weights.items()}
    m = {n: torch.zeros_like(t) for n, t in w.items()}
    v = {n: torch.zeros_like(t) for n, t in w.items()}
    count = dict.fromkeys(w, 0)
    for grads in steps:
        for name, g in grads.items():
            if g is None:
                continue
            g = g * min(1.0, max_norm / (float(g.norm()) + 1e-6))
            m[name] = b1 * m[name] + (1 - b1) * g
            v[name] = b2 * v[name] + (1 - b2) * g * g
            u = m[name] / (v[name].sqrt() + e)
            lam = weight_decay if name in decayed else 0.0
            if lam > 0:
                u = u + lam * w[name]
            x = count[name] / t_total
            factor = 1.0 if t_total == -1 else (x / warmup if x < warmup else max((x - 1) / (warmup - 1), 0.0))
            w[name] = w[name] - lr * factor * u
            count[name] += 1
    return w, m, v


@pytest.mark.parametrize("t_total,warmup", [(8, 0.25), (-1, -1)])
def test_bertadam_matches_reference_formulas(t_total, warmup):
    gen = torch.Generator().manual_seed(3)
    steps = gradient_steps(6, 1.0)
    for grads in steps:  # per-tensor norms on both sides of the clip threshold
        grads["encoder.dense.bias"] = grads["encoder.dense.bias"] * 0.01
        grads["encoder.dense.weight"] = grads["encoder.dense.weight"] * (5 + torch.rand((), generator=gen).item())
    params = make_params(torch.float32)
    opt = BertAdam(make_groups(params, 0.01), lr=0.05, warmup=warmup, t_total=t_total)
    for k, grads in enumerate(steps):
        set_grads(params, grads)
        grad_before = params["encoder.dense.weight"].grad.clone()
        before = {n: p.detach().clone() for n, p in params.items()}
        opt.step()
        assert torch.equal(params["encoder.dense.weight"].grad, grad_before)  # .grad is not clipped in place
        if k == 0 and t_total != -1:  # the original's first update runs at lr·schedule(0) = 0
            assert all(torch.equal(p, before[n]) for n, p in params.items())
    ref_w, ref_m, ref_v = reference_bertadam(initial_weights(), steps, 0.05, warmup, t_total, 0.01)
    for name, param in params.items():
        torch.testing.assert_close(param.detach().double(), ref_w[name], rtol=1e-6, atol=1e-6)
        if name != NO_GRAD:
            assert (param.detach().double() - initial_weights()[name]).abs().max() > 1e-3
            state = opt.state[param]
            assert state["step"] == 6
            torch.testing.assert_close(state["next_m"].double(), ref_m[name], rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(state["next_v"].double(), ref_v[name], rtol=1e-6, atol=1e-7)


def test_bertadam_state_dict_round_trip():
    steps = gradient_steps(5, 3.0)
    params = make_params(torch.float32)
    opt = BertAdam(make_groups(params, 0.01), lr=0.05, warmup=0.1, t_total=10)
    for grads in steps:
        set_grads(params, grads)
        opt.step()

    params2 = make_params(torch.float32)
    opt2 = BertAdam(make_groups(params2, 0.01), lr=0.05, warmup=0.1, t_total=10)
    for grads in steps[:2]:
        set_grads(params2, grads)
        opt2.step()
    restored = BertAdam(make_groups(params2, 0.01), lr=0.05, warmup=0.1, t_total=10)
    buffer = io.BytesIO()
    torch.save(opt2.state_dict(), buffer)
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for grads in steps[2:]:
        set_grads(params2, grads)
        restored.step()
    for name in params:
        assert torch.equal(params[name], params2[name]), name


# --------------------------------------------------------------------------------------------
# Parameter groups
# --------------------------------------------------------------------------------------------

BERT_LIKE_NAMES = {
    # name: (shape, expected in the pretraining decay group?)
    "bert.embeddings.word_embeddings.weight": ((16, 4), True),
    "bert.embeddings.position_embeddings.weight": ((8, 4), True),
    "bert.embeddings.LayerNorm.weight": ((4,), False),
    "bert.embeddings.LayerNorm.bias": ((4,), False),
    "bert.encoder.layer.0.attention.self.query.weight": ((4, 4), True),
    "bert.encoder.layer.0.attention.self.query.bias": ((4,), False),
    "bert.encoder.layer.0.attention.output.LayerNorm.weight": ((4,), False),
    "bert.encoder.layer.0.intermediate.dense_act.weight": ((6, 4), True),
    "bert.encoder.layer.0.intermediate.dense_act.bias": ((6,), False),
    "bert.encoder.layer.0.output.LayerNorm.gamma": ((4,), False),  # old TF-era names
    "bert.encoder.layer.0.output.LayerNorm.beta": ((4,), False),
    "bert.pooler.dense_act.weight": ((4, 4), True),
    "bert.pooler.dense_act.bias": ((4,), False),
    "cls.predictions.bias": ((16,), False),
    "cls.predictions.transform.dense_act.weight": ((4, 4), True),
    "cls.predictions.transform.norm.gamma": ((4,), False),  # gamma/beta exempt on their own
    "cls.predictions.transform.norm.beta": ((4,), False),
    "cls.seq_relationship.weight": ((2, 4), True),
}


def bert_like_module() -> nn.Module:
    """Modules nested so that named_parameters() yields exactly BERT_LIKE_NAMES (+ a tied decoder and a frozen one)."""
    root = nn.Module()
    for name, (shape, _) in BERT_LIKE_NAMES.items():
        *path, leaf = name.split(".")
        node = root
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, nn.Module())
            node = getattr(node, part)
        node.register_parameter(leaf, nn.Parameter(torch.zeros(shape)))
    decoder = nn.Module()
    decoder.weight = root.bert.embeddings.word_embeddings.weight  # tied, as in BertForPreTraining
    root.cls.predictions.add_module("decoder", decoder)
    root.bert.embeddings.register_parameter("frozen_table", nn.Parameter(torch.zeros(3), requires_grad=False))
    return root


def names_of(group, model) -> list[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(p)] for p in group["params"]]


def test_pretraining_param_groups_on_bert_names():
    model = bert_like_module()
    decay, no_decay = pretraining_param_groups(model, weight_decay=0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    expected_decay = [n for n, (_, d) in BERT_LIKE_NAMES.items() if d]
    expected_no_decay = [n for n, (_, d) in BERT_LIKE_NAMES.items() if not d]
    assert names_of(decay, model) == expected_decay  # model order, tied decoder once, frozen left out
    assert names_of(no_decay, model) == expected_no_decay


def test_finetune_groups_and_optimizers():
    model = bert_like_module()
    decay, no_decay = finetune_param_groups(model, 0.01, skip_pooler=True)
    assert "bert.pooler.dense_act.weight" not in names_of(decay, model)
    assert not any("pooler" in n for n in names_of(no_decay, model))
    # Fine-tuning markers don't know gamma/beta: those old names are decayed (as in the original).
    assert "bert.encoder.layer.0.output.LayerNorm.gamma" in names_of(decay, model)
    assert "cls.predictions.bias" in names_of(no_decay, model)

    adamw = build_finetune_optimizer(model, lr=3e-5, weight_decay=0.01)
    assert isinstance(adamw, torch.optim.AdamW)
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.01, 0.0]
    assert all(g["eps"] == 1e-6 and g["betas"] == (0.9, 0.999) for g in adamw.param_groups)
    assert "bert.pooler.dense_act.weight" in names_of(adamw.param_groups[0], model)

    bertadam = build_finetune_optimizer(model, lr=3e-5, kind="bertadam", warmup=0.1, t_total=100, skip_pooler=True)
    assert isinstance(bertadam, BertAdam)
    assert [g["weight_decay"] for g in bertadam.param_groups] == [0.01, 0.0]
    assert bertadam.param_groups[0]["t_total"] == 100 and bertadam.param_groups[0]["warmup"] == 0.1
    assert names_of(bertadam.param_groups[0], model) == names_of(decay, model)

    with pytest.raises(InputError, match="sgd"):
        build_finetune_optimizer(model, lr=1.0, kind="sgd")


def test_pretraining_groups_on_real_bert_for_pretraining(tmp_path):
    if not (ROOT / "modeling.py").exists():
        pytest.skip("modeling.py is not written yet")
    import modeling

    config = {"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
              "intermediate_size": 32, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
              "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 32, "type_vocab_size": 2,
              "initializer_range": 0.02}
    (tmp_path / "bert_config.json").write_text(json.dumps(config))
    model = modeling.BertForPreTraining(modeling.BertConfig.from_json_file(tmp_path / "bert_config.json"))
    decay, no_decay = pretraining_param_groups(model)
    # In BERT exactly the matrices (embedding tables included) are decayed; vectors never are.
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() == 1 for p in no_decay["params"])
    named = dict(model.named_parameters())
    assert len(decay["params"]) + len(no_decay["params"]) == len(named)
    assert any(p is named["cls.predictions.bias"] for p in no_decay["params"])
    assert any(p is named["bert.embeddings.word_embeddings.weight"] for p in decay["params"])


# --------------------------------------------------------------------------------------------
# LAMB keeps its per-step scalars on the device (issue 21)
# --------------------------------------------------------------------------------------------

# Parameters and moments after `lamb_trajectory`, saved with the LAMB of commit 23f5a3e (before its
# per-step scalars moved to the device: the global norm was read on the host, the step count and the
# clipping divisor copied to the device each step). The fused path must give the same bits; the
# foreach path now scales the gradients by a device tensor instead of folding the factor into a host
# scalar, so it agrees to float rounding.
BEFORE_DEVICE_SCALARS = ROOT / "tests" / "assets" / "lamb_trajectories_23f5a3e.pt"
TRAJECTORY_CASES = [(path, scale, decay, nvlamb, dtype)
                    for path in ("fused", "foreach") for scale in (10.0, 0.01) for decay in (0.01, 0.0)
                    for nvlamb in (False, True) for dtype in (torch.float32, torch.bfloat16)
                    if not (path == "fused" and dtype == torch.bfloat16)]


def lamb_trajectory(path: str, grad_scale: float, weight_decay: float, use_nvlamb: bool,
                    dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Five LAMB steps, the third with an inf gradient (skipped); weights and moments at the end."""
    steps = gradient_steps(5, grad_scale, seed=7)
    steps[2] = dict(steps[2])
    steps[2]["encoder.dense.weight"] = steps[2]["encoder.dense.weight"].clone()
    steps[2]["encoder.dense.weight"][1, 2] = math.inf
    params, opt = run_lamb(dtype, steps, 0.05, weight_decay, use_nvlamb, path)
    result = {f"w/{n}": p.detach().clone() for n, p in params.items()}
    for name, param in params.items():
        for key, value in opt.state.get(param, {}).items():
            result[f"{key}/{name}"] = value.clone()
    return result


def trajectory_key(case) -> str:
    path, scale, decay, nvlamb, dtype = case
    return f"{path}-{scale}-{decay}-{nvlamb}-{str(dtype).split('.')[-1]}"


@pytest.mark.parametrize("case", TRAJECTORY_CASES, ids=trajectory_key)
def test_lamb_steps_unchanged_by_keeping_scalars_on_the_device(case):
    before = torch.load(BEFORE_DEVICE_SCALARS, weights_only=True)[trajectory_key(case)]
    after = lamb_trajectory(*case)
    assert after.keys() == before.keys()
    for name, value in before.items():
        if case[0] == "fused":
            assert torch.equal(after[name], value), name
        else:
            torch.testing.assert_close(after[name], value, rtol=1e-5, atol=1e-8, msg=name)


class _HostTraffic(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the operations that pass a value between host and tensor: reading a tensor's value on the
    host (`.item()`, `float()`: a device-to-host wait on a GPU) and making a tensor from host data
    (`torch.tensor(x)`: a host-to-device copy there)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if name in ("aten._local_scalar_dense", "aten.lift_fresh", "aten.lift_fresh_copy"):
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("path", ["foreach", "fused"])
def test_lamb_step_reads_nothing_on_the_host_until_asked(path):
    """The device-side scalars: a step (clipped, with weight decay and trust ratios, one of them skipped for
    an inf gradient) makes no tensor from host data and reads no value back; asking for the skip count does,
    once. (On the CPU the fused path reads its trust ratios with .tolist(), which dispatches no op.)"""
    steps = gradient_steps(3, 10.0, seed=7)
    steps[1] = dict(steps[1])
    steps[1]["encoder.dense.bias"] = steps[1]["encoder.dense.bias"].clone()
    steps[1]["encoder.dense.bias"][0] = math.nan
    params = make_params(torch.float32)
    opt = Lamb(make_groups(params, 0.01), lr=0.05, **LAMB_PATHS[path])
    traffic = _HostTraffic()
    for grads in steps:
        set_grads(params, grads)
        with traffic:
            opt.step()
    assert traffic.seen == []
    assert [g["step"] for g in opt.param_groups] == [3, 3], "the host has not read the skip yet"
    with traffic:
        assert opt.settle() == 1
    assert traffic.seen == ["aten._local_scalar_dense"]
    assert [g["step"] for g in opt.param_groups] == [2, 2] and opt.skipped_steps == 1
    ref_w, _, _, _ = reference_lamb(initial_weights(), [steps[0], steps[2]], 0.05, 0.01, False)
    for name, param in params.items():
        torch.testing.assert_close(param.detach().double(), ref_w[name], rtol=1e-5, atol=1e-6)
