"""Step1X-Edit: DiT + connector against a plain reference transcription, probes, input preparation,
checkpoint key mapping, and the Segmenter end to end — all on tiny random models (no downloads).

The reference forward below is written from the structure of the official code
(stepfun-ai/Step1X-Edit ``modules/model_edit.py``, ``modules/layers.py``, ``modules/connector_edit.py``):
explicit softmax attention, RoPE as 2x2 rotation matrices, einsum-free tensor ops, reading
parameters by their official checkpoint names from a state dict.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import editseg.backbones.step1x.model as step1x_model
from editseg.backbones.step1x.model import Step1XConfig, Step1XEditDiT, probes_installed
from editseg.probes import ProbePlan, ProbeRecorder, TokenLayout

TINY = Step1XConfig(
    in_channels=16,
    out_channels=16,
    vec_in_dim=8,
    context_in_dim=24,
    hidden_size=32,
    num_heads=2,
    depth=2,
    depth_single_blocks=3,
    axes_dim=(4, 6, 6),
    connector_in_channels=20,
    connector_heads=2,
)


# -- reference forward (independent transcription) -----------------------------------------------
def _lin(sd, name, x):
    out = x @ sd[f"{name}.weight"].T
    return out + sd[f"{name}.bias"] if f"{name}.bias" in sd else out


def _ln(x, sd=None, name=None):
    w = None if sd is None else sd[f"{name}.weight"]
    b = None if sd is None else sd[f"{name}.bias"]
    return F.layer_norm(x, x.shape[-1:], w, b, eps=1e-6)


def _rms(x, w):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-6) * w


def _time_embedding(t, dim=256):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _attention(q, k, v, mask=None):
    """(B, H, L, D) explicit softmax attention → (B, L, H*D)."""
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    out = torch.softmax(logits, dim=-1) @ v
    return out.permute(0, 2, 1, 3).reshape(out.shape[0], out.shape[2], -1)


def _heads(x, heads, parts):
    """(B, L, parts*H*D) → parts tensors (B, H, L, D) (layout "B L (K H D) -> K B H L D")."""
    b, l, _ = x.shape
    return x.view(b, l, parts, heads, -1).permute(2, 0, 3, 1, 4)


def _rope_matrices(ids, axes_dim, theta):
    mats = []
    for i, dim in enumerate(axes_dim):
        omega = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        ang = ids[..., i].double()[..., None] * omega  # B, L, dim/2
        m = torch.stack([torch.cos(ang), -torch.sin(ang), torch.sin(ang), torch.cos(ang)], dim=-1)
        mats.append(m.view(*ang.shape, 2, 2))
    return torch.cat(mats, dim=-3).unsqueeze(1).float()  # B, 1, L, D/2, 2, 2


def _rope(x, pe):
    xs = x.float().reshape(*x.shape[:-1], -1, 1, 2)
    out = pe[..., 0] * xs[..., 0] + pe[..., 1] * xs[..., 1]
    return out.reshape(*x.shape)


def reference_connector(sd, cfg, x, t, mask):
    p = "connector."
    t = t * 1000
    m = mask.unsqueeze(-1).float()
    pooled = (x * m).sum(1) / m.sum(1)
    if f"{p}scale_factor" in sd:
        pooled = pooled * (1 + sd[f"{p}scale_factor"])
    y = _lin(sd, f"{p}global_proj_out", pooled)
    s = f"{p}S."
    temb = _lin(sd, f"{s}t_embedder.mlp.2", F.silu(_lin(sd, f"{s}t_embedder.mlp.0", _time_embedding(t))))
    ctx = _lin(sd, f"{s}c_embedder.linear_2", F.silu(_lin(sd, f"{s}c_embedder.linear_1", (x * m).sum(1) / m.sum(1))))
    c = temb + ctx
    h = _lin(sd, f"{s}input_embedder", x)
    L = mask.shape[1]
    keep = mask.bool()
    attn_mask = (keep.view(-1, 1, 1, L).expand(-1, 1, L, L) & keep.view(-1, 1, L, 1).expand(-1, 1, L, L)).clone()
    attn_mask[:, :, :, 0] = True
    for i in range(cfg.connector_depth):
        b = f"{s}individual_token_refiner.blocks.{i}."
        gates = _lin(sd, f"{b}adaLN_modulation.1", F.silu(c))
        g_msa, g_mlp = gates.chunk(2, dim=1)
        q, k, v = _heads(_lin(sd, f"{b}self_attn_qkv", _ln(h, sd, f"{b}norm1")), cfg.connector_heads, 3)
        h = h + _lin(sd, f"{b}self_attn_proj", _attention(q, k, v, attn_mask)) * g_msa.unsqueeze(1)
        mlp = _lin(sd, f"{b}mlp.fc2", F.silu(_lin(sd, f"{b}mlp.fc1", _ln(h, sd, f"{b}norm2"))))
        h = h + mlp * g_mlp.unsqueeze(1)
    return h, y


def reference_forward(sd, cfg, img, img_ids, txt_ids, t, llm, mask):
    H = cfg.num_heads
    txt, y = reference_connector(sd, cfg, llm, t, mask)
    img = _lin(sd, "img_in", img)
    vec = _lin(sd, "time_in.out_layer", F.silu(_lin(sd, "time_in.in_layer", _time_embedding(1000 * t))))
    vec = vec + _lin(sd, "vector_in.out_layer", F.silu(_lin(sd, "vector_in.in_layer", y)))
    txt = _lin(sd, "txt_in", txt)
    pe = _rope_matrices(torch.cat([txt_ids, img_ids], dim=1), cfg.axes_dim, cfg.theta)

    def mod(name, n):
        return _lin(sd, name, F.silu(vec))[:, None, :].chunk(n, dim=-1)

    for i in range(cfg.depth):
        b = f"double_blocks.{i}."
        im = mod(f"{b}img_mod.lin", 6)
        tm = mod(f"{b}txt_mod.lin", 6)
        qkv = {}
        for stream, x, m in (("img", img, im), ("txt", txt, tm)):
            xm = (1 + m[1]) * _ln(x) + m[0]
            q, k, v = _heads(_lin(sd, f"{b}{stream}_attn.qkv", xm), H, 3)
            q = _rms(q, sd[f"{b}{stream}_attn.norm.query_norm.scale"])
            k = _rms(k, sd[f"{b}{stream}_attn.norm.key_norm.scale"])
            qkv[stream] = (q, k, v)
        q = torch.cat([qkv["txt"][0], qkv["img"][0]], dim=2)
        k = torch.cat([qkv["txt"][1], qkv["img"][1]], dim=2)
        v = torch.cat([qkv["txt"][2], qkv["img"][2]], dim=2)
        attn = _attention(_rope(q, pe), _rope(k, pe), v)
        t_attn, i_attn = attn[:, : txt.shape[1]], attn[:, txt.shape[1] :]
        img = img + im[2] * _lin(sd, f"{b}img_attn.proj", i_attn)
        h = (1 + im[4]) * _ln(img) + im[3]
        img = img + im[5] * _lin(sd, f"{b}img_mlp.2", F.gelu(_lin(sd, f"{b}img_mlp.0", h), approximate="tanh"))
        txt = txt + tm[2] * _lin(sd, f"{b}txt_attn.proj", t_attn)
        h = (1 + tm[4]) * _ln(txt) + tm[3]
        txt = txt + tm[5] * _lin(sd, f"{b}txt_mlp.2", F.gelu(_lin(sd, f"{b}txt_mlp.0", h), approximate="tanh"))

    x = torch.cat([txt, img], dim=1)
    D = cfg.hidden_size
    for i in range(cfg.depth_single_blocks):
        b = f"single_blocks.{i}."
        shift, scale, gate = mod(f"{b}modulation.lin", 3)
        h = _lin(sd, f"{b}linear1", (1 + scale) * _ln(x) + shift)
        qkv, mlp = h[..., : 3 * D], h[..., 3 * D :]
        q, k, v = _heads(qkv, H, 3)
        q = _rms(q, sd[f"{b}norm.query_norm.scale"])
        k = _rms(k, sd[f"{b}norm.key_norm.scale"])
        attn = _attention(_rope(q, pe), _rope(k, pe), v)
        x = x + gate * _lin(sd, f"{b}linear2", torch.cat([attn, F.gelu(mlp, approximate="tanh")], dim=2))
    x = x[:, txt.shape[1] :]
    shift, scale = _lin(sd, "final_layer.adaLN_modulation.1", F.silu(vec)).chunk(2, dim=1)
    x = (1 + scale[:, None]) * _ln(x) + shift[:, None]
    return _lin(sd, "final_layer.linear", x)


# -- helpers ---------------------------------------------------------------------------------------
def _randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial values everywhere (norm scales, zero-initialised gates)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if p.ndim == 1 and p.numel() <= 16 else 0.0))
    return model.eval()


def _inputs(batch=2, text_len=7, rows=3, cols=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    n = rows * cols
    ids = torch.zeros(rows, cols, 3)
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(cols)[None, :]
    ids = ids.reshape(1, n, 3)
    img_ids = torch.cat([ids, ids], dim=1).expand(batch, -1, -1)  # noisy and reference share positions
    mask = torch.ones(batch, text_len, dtype=torch.long)
    mask[0, 5:] = 0
    return {
        "img": torch.randn(batch, 2 * n, TINY.in_channels, generator=g),
        "img_ids": img_ids,
        "txt_ids": torch.zeros(batch, text_len, 3),
        "timesteps": torch.ones(batch),
        "llm_embedding": torch.randn(batch, text_len, TINY.connector_in_channels, generator=g),
        "mask": mask,
    }


@pytest.fixture(scope="module")
def tiny_dit():
    torch.manual_seed(0)
    return _randomised(Step1XEditDiT(TINY))


def test_dit_equals_reference_transcription(tiny_dit):
    inputs = _inputs()
    with torch.no_grad():
        ours = tiny_dit(**inputs)
        ref = reference_forward(tiny_dit.state_dict(), TINY, inputs["img"], inputs["img_ids"], inputs["txt_ids"],
                                inputs["timesteps"], inputs["llm_embedding"], inputs["mask"])
    assert ours.shape == (2, 24, TINY.out_channels)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    # the timestep matters (guards against a constant embedding)
    with torch.no_grad():
        other = tiny_dit(**{**inputs, "timesteps": torch.full((2,), 0.5)})
    assert not torch.allclose(other, ours)


def test_connector_without_pooled_scale_matches_reference():
    cfg = Step1XConfig(**{**TINY.__dict__, "pooled_scale": False})
    model = _randomised(Step1XEditDiT(cfg), seed=3)
    assert "connector.scale_factor" not in model.state_dict()
    inputs = _inputs(seed=4)
    with torch.no_grad():
        txt, pooled = model.connector(inputs["llm_embedding"], inputs["timesteps"], inputs["mask"])
        ref_txt, ref_pooled = reference_connector(model.state_dict(), cfg, inputs["llm_embedding"], inputs["timesteps"], inputs["mask"])
    torch.testing.assert_close(txt, ref_txt, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pooled, ref_pooled, rtol=1e-5, atol=1e-5)


# -- probes ---------------------------------------------------------------------------------------
def _plan(batch, text_len, rows, cols, fused=True, features=None):
    layout = TokenLayout(text_len=text_len, noisy_len=rows * cols, clean_len=rows * cols, grid=(rows, cols))
    prompt = torch.zeros(batch, text_len)
    prompt[0, [1, 2]] = 1
    prompt[1, [3]] = 1
    return ProbePlan(layout, prompt, None, features or {}, fused=fused)


def _capture_qkv(model, inputs):
    captured = []
    original = step1x_model.sdpa_attend

    def recording(q, k, v, scale):
        captured.append((q.detach().clone(), k.detach().clone(), v.detach().clone()))
        return original(q, k, v, scale)

    step1x_model.sdpa_attend = recording
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        step1x_model.sdpa_attend = original
    return captured


def _naive(q, k, layout, prompt_mask):
    A = torch.softmax(q.double().transpose(1, 2) @ k.double().transpose(1, 2).transpose(-1, -2) / q.shape[-1] ** 0.5, -1).mean(1)
    v = layout.clean
    cams, rams = [], []
    for b in range(A.shape[0]):
        c = A[b, v][:, : layout.text_len] @ prompt_mask[b].double()
        A_vv = A[b, v, v]
        cams.append(c)
        rams.append((A_vv / A_vv.sum(1, keepdim=True)) @ c)
    return torch.stack(cams), torch.stack(rams)


@pytest.mark.parametrize("fused", [True, False])
def test_probes_equal_naive_attention_on_double_and_single_blocks(tiny_dit, fused):
    inputs = _inputs()
    plan = _plan(2, 7, 3, 4, fused=fused)
    captured = _capture_qkv(tiny_dit, inputs)
    assert len(captured) == TINY.depth + TINY.depth_single_blocks
    recorder = ProbeRecorder(plan)
    with torch.no_grad(), probes_installed(tiny_dit, recorder):
        tiny_dit(**inputs)
    assert sorted(recorder.cam) == list(range(len(captured)))
    for block, (q, k, _) in enumerate(captured):
        cam, ram = _naive(q, k, plan.layout, plan.prompt_mask)
        torch.testing.assert_close(recorder.cam[block].double(), cam, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(recorder.ram[block].double(), ram, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("fused", [True, False])
def test_probes_leave_output_unchanged_and_features_match(tiny_dit, fused):
    inputs = _inputs()
    blocks = frozenset(range(TINY.depth + TINY.depth_single_blocks))
    plan = _plan(2, 7, 3, 4, fused=fused, features={"attn": blocks, "adaln": blocks, "block": blocks})
    layout = plan.layout
    with torch.no_grad():
        bare = tiny_dit(**inputs)
        recorder = ProbeRecorder(plan)
        with probes_installed(tiny_dit, recorder):
            probed = tiny_dit(**inputs)
        again = tiny_dit(**inputs)
    if fused:
        torch.testing.assert_close(probed, bare, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(probed, bare)
    assert torch.equal(again, bare)

    # features against independent captures: attention output (A·V), AdaLN input, block output
    captured = _capture_qkv(tiny_dit, inputs)
    outputs, modulated, hooks = {}, {}, []
    for index, block in enumerate(tiny_dit.blocks):
        hooks.append(block.register_forward_hook(lambda m, a, out, i=index: outputs.__setitem__(i, out)))
        first_linear = block.img_attn.qkv if index < TINY.depth else block.linear1
        hooks.append(first_linear.register_forward_pre_hook(lambda m, a, i=index: modulated.__setitem__(i, a[0])))
    with torch.no_grad():
        tiny_dit(**inputs)
    for hook in hooks:
        hook.remove()
    for index, (q, k, v) in enumerate(captured):
        double = index < TINY.depth
        A = torch.softmax(q.double().transpose(1, 2) @ k.double().transpose(1, 2).transpose(-1, -2) / q.shape[-1] ** 0.5, -1)
        av = (A @ v.double().transpose(1, 2)).transpose(1, 2).flatten(2)[:, layout.clean]
        torch.testing.assert_close(recorder.features[("attn", index)].double(), av, rtol=1e-4, atol=1e-5)
        out = outputs[index][0] if double else outputs[index]
        rows = layout.clean_in_image_stream if double else layout.clean
        torch.testing.assert_close(recorder.features[("block", index)], out[:, rows])
        torch.testing.assert_close(recorder.features[("adaln", index)], modulated[index][:, rows])
