"""Step1X-Edit: DiT + connector against a plain reference transcription, probes, input preparation,
checkpoint key mapping, and the Segmenter end to end — all on tiny random models (no downloads).

The reference forward below is written from the structure of the official code
(stepfun-ai/Step1X-Edit ``modules/model_edit.py``, ``modules/layers.py``, ``modules/connector_edit.py``):
explicit softmax attention, RoPE as 2x2 rotation matrices, einsum-free tensor ops, reading
parameters by their official checkpoint names from a state dict.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

import editseg.backbones.step1x.model as step1x_model
from editseg.backbones.step1x.model import Step1XConfig, Step1XEditDiT, probes_installed
from editseg.backbones.step1x.tiny import TINY_DIT
from editseg.probing.recorder import ProbePlan, ProbeRecorder, TokenLayout
from reference import ROUTES

# The shipped tiny DiT's sizes, with a connector input (20) unlike any other width here.
TINY = dataclasses.replace(TINY_DIT, connector_in_channels=20)


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
def _plan(batch, text_len, rows, cols, route="lse", features=None):
    layout = TokenLayout(text_len=text_len, noisy_len=rows * cols, clean_len=rows * cols, grid=(rows, cols))
    prompt = torch.zeros(batch, text_len)
    prompt[0, [1, 2]] = 1
    prompt[1, [3]] = 1
    return ProbePlan(layout, prompt, None, features or {}, **ROUTES[route])


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


@pytest.mark.parametrize("route", ["lse", "fused", "separate"])
def test_probes_equal_naive_attention_on_double_and_single_blocks(tiny_dit, route):
    inputs = _inputs()
    plan = _plan(2, 7, 3, 4, route=route)
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


@pytest.mark.parametrize("route", ["lse", "fused", "separate"])
def test_probes_leave_output_unchanged_and_features_match(tiny_dit, route):
    inputs = _inputs()
    blocks = frozenset(range(TINY.depth + TINY.depth_single_blocks))
    plan = _plan(2, 7, 3, 4, route=route, features={"attn": blocks, "adaln": blocks, "block": blocks})
    layout = plan.layout
    with torch.no_grad():
        bare = tiny_dit(**inputs)
        recorder = ProbeRecorder(plan)
        with probes_installed(tiny_dit, recorder):
            probed = tiny_dit(**inputs)
        again = tiny_dit(**inputs)
    if route == "fused":
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


# -- input preparation (tiny pipeline) ---------------------------------------------------------------
import warnings  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from editseg.backbones.step1x import pipeline as step1x_pipeline  # noqa: E402
from editseg.backbones.step1x.backbone import Step1XEditBackbone  # noqa: E402
from editseg.backbones.step1x.pipeline import official_size, split_quoted, vlm_inputs  # noqa: E402


@pytest.fixture(scope="module")
def step1x_backbone():
    from editseg.backbones.step1x.tiny import build_tiny_step1x_pipeline

    return Step1XEditBackbone(build_tiny_step1x_pipeline(seed=0), name="tiny-step1x", is_random=True)


@pytest.fixture()
def photo():
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((50, 70, 3)) * 255).astype(np.uint8))


def test_official_resize_rule_hand_computed():
    # 640x480: w = ceil(sqrt(512² · 4/3)) = 592, h = ceil(592 / (4/3)) = 445 → floor16 → 432
    assert official_size(640, 480) == (592, 432)
    assert official_size(480, 640) == (432, 592)
    assert official_size(512, 512) == (512, 512)
    # 1000x300: w = ceil(934.8) = 935 → 928; h = ceil(280.5) = 281 → 272
    assert official_size(1000, 300) == (928, 272)
    assert official_size(70, 50, 64) == (64, 48)


def test_image_preparation_vae_packing_and_position_ids(step1x_backbone, photo):
    bb, pipe = step1x_backbone, step1x_backbone.pipeline
    prepared = bb.prepare_image(photo)
    geometry = prepared.geometry
    assert geometry.resized_size == (64, 48) and geometry.crop == (0, 0, 64, 48)  # no crop
    assert geometry.patch == 4 and geometry.grid == (12, 16)  # tiny VAE 2x down, 2x2 packing
    latents = prepared.tensors["latents"]
    assert latents.shape == (1, 12 * 16, 16)

    resized = photo.resize((64, 48), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.array(resized)).permute(2, 0, 1).float()[None] / 255
    with torch.no_grad():
        z = pipe.vae.encode(x * 2 - 1).latent_dist.mode()
    z = (z - 0.1159) * 0.3611
    for r, c, ch, ph, pw in [(0, 0, 0, 0, 0), (3, 5, 2, 1, 0), (11, 15, 3, 1, 1), (7, 2, 1, 0, 1)]:
        assert latents[0, r * 16 + c, ch * 4 + ph * 2 + pw] == pytest.approx(float(z[0, ch, 2 * r + ph, 2 * c + pw]), abs=1e-6)

    text = bb.encode_text(["the dog", "a cat"], ["remove the dog", "remove a cat"])
    inputs = bb.first_step_inputs(prepared, text, seed=3)
    n = 12 * 16
    assert inputs["img"].shape == (2, 2 * n, 16)
    torch.testing.assert_close(inputs["img"][:, n:], latents.expand(2, -1, -1))
    ids = inputs["img_ids"][0]
    assert torch.equal(ids[:n], ids[n:])  # noisy and reference tokens share positions
    assert ids[:n, 0].abs().sum() == 0
    assert ids[17].tolist() == [0.0, 1.0, 1.0] and ids[n - 1].tolist() == [0.0, 11.0, 15.0]
    assert inputs["txt_ids"].shape == (2, 640, 3) and inputs["txt_ids"].abs().sum() == 0
    assert inputs["timesteps"].tolist() == [1.0, 1.0]
    assert torch.equal(inputs["img"][0, :n], inputs["img"][1, :n])  # one noise draw for the batch
    layout = bb.layout_for(prepared, text)
    assert (layout.text_len, layout.noisy_len, layout.clean_len) == (640, n, n)


def test_quote_splitting_hand_computed():
    text = "x" * 160 + 'a "bc" d'
    pieces = split_quoted(text)
    assert [p.text for p in pieces] == ["x" * 160 + 'a "', "“b”", "“c”", '" d']
    assert [p.start for p in pieces] == [0, 163, 164, 165]
    assert [p.char for p in pieces] == [False, True, True, False]
    # before position 156 quotes are ordinary text; apostrophes count as double quotes after it
    assert [p.text for p in split_quoted('say "hi"')] == ['say "hi"']
    assert [p.text for p in split_quoted("y" * 156 + "'z")][:2] == ["y" * 156 + '"', "“z”"]


def test_vlm_input_matches_processor_and_token_counts(step1x_backbone, photo):
    bb, pipe = step1x_backbone, step1x_backbone.pipeline
    prepared = bb.prepare_image(photo)
    view = prepared.tensors["vlm_image"]
    # 64x48 → qwen-vl-utils: round(64/28)·28 = 56, round(48/28)·28 = 56; 56² = 3136 = its minimum area
    assert view.size == (56, 56)
    inputs = vlm_inputs(pipe.processor, "remove the dog", view)
    plain = pipe.processor(text=[inputs.text], images=[view], padding=True, return_tensors="pt")
    assert torch.equal(inputs.input_ids, plain["input_ids"])  # no quotes: piecewise tokens == plain tokens
    tokenizer = pipe.processor.tokenizer
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((inputs.input_ids == pad).sum()) == int(inputs.image_grid_thw.prod()) // 4
    assert torch.equal(inputs.attention_mask, (inputs.input_ids > 0).long())
    assert inputs.text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert "User Prompt:<|vision_start|><|image_pad|><|vision_end|>remove the dog<|im_end|>\n<|im_start|>assistant\n" in inputs.text
    # an apostrophe opens a "quote": the rest is tokenised one character at a time, as officially
    quoted = vlm_inputs(pipe.processor, "remove the man's hat", view)
    assert quoted.input_ids.shape[1] > vlm_inputs(pipe.processor, "remove the mans hat", view).input_ids.shape[1]

    text = bb.encode_text(["the dog"], ["remove the dog"])
    length = inputs.input_ids.shape[1] - pipe.drop_tokens
    assert int(text.tensors["mask"].sum()) == length and text.tensors["embeds"].shape == (1, 640, 32)
    assert text.tensors["embeds"][0, length:].abs().sum() == 0  # zero padding
    with torch.no_grad():
        hidden = pipe.text_encoder(
            input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, pixel_values=inputs.pixel_values,
            image_grid_thw=inputs.image_grid_thw, output_hidden_states=True,
            mm_token_type_ids=(inputs.input_ids == pad).int(),  # 3-D image positions (test_step1x_official_text)
        ).hidden_states[-1]
    torch.testing.assert_close(text.tensors["embeds"][0, :length], hidden[0, pipe.drop_tokens :])


@pytest.mark.parametrize("expression", ["the dog", "the man on the left", "a big zebra"])
def test_expression_token_indices_decode_to_the_expression(step1x_backbone, photo, expression):
    bb = step1x_backbone
    bb.prepare_image(photo)
    prompt = bb.encode_text([expression], [f"remove {expression}"]).prompts[0]
    indices = prompt.indices("expression")
    tokenizer = bb.pipeline.processor.tokenizer
    # word-aligned: a stand-alone space token of the tiny BPE between two words belongs to neither
    squeeze = "".join
    assert squeeze(tokenizer.decode([prompt.input_ids[i] for i in indices]).split()) == squeeze(expression.split())
    assert squeeze("".join(prompt.token_strings(indices)).split()) == squeeze(expression.split())
    assert prompt.text[prompt.offsets[indices[0]][0] : prompt.offsets[indices[-1]][1]].strip() == expression
    assert max(indices) < prompt.num_real_tokens <= 640


def test_probe_forward_and_segmenter_end_to_end(step1x_backbone, photo):
    from editseg import MethodConfig, Segmenter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        segmenter = Segmenter(step1x_backbone, batch_size=2)
    results = segmenter.segment(photo, ["the dog", "a cat on the left", "zebra"])
    assert len(results) == 3
    for result in results:
        assert result.mask.shape == (50, 70) and result.cam.shape == (50, 70)
        assert result.cam_tokens.shape == (12, 16)
        assert result.config["feature_block"] == step1x_backbone.default_feature_block
    one = segmenter.segment(photo, "zebra", MethodConfig(attention_blocks="single", feature_site="block", feature_block=1))
    assert one.prompt_tokens and "".join(one.prompt_tokens).strip() == "zebra"


def test_default_feature_block_is_the_papers():
    class Fake(Step1XEditBackbone):
        def __init__(self, double, single):
            self.num_double_blocks, self.num_single_blocks = double, single

    assert Fake(19, 38).default_feature_block == 40
    assert Fake(2, 3).default_feature_block == 4


# -- checkpoints ------------------------------------------------------------------------------------
def _to_diffusers_names(sd, cfg):
    """The diffusers-format names of an official-named state dict (as the v1p1 conversion writes them)."""
    out = {}
    for old, new in [("time_in.in_layer", "time_embed.in_layer"), ("time_in.out_layer", "time_embed.out_layer"),
                     ("vector_in.in_layer", "vec_embed.in_layer"), ("vector_in.out_layer", "vec_embed.out_layer"),
                     ("txt_in", "context_embedder"), ("img_in", "x_embedder"), ("final_layer.linear", "proj_out")]:
        for p in ("weight", "bias"):
            out[f"{new}.{p}"] = sd[f"{old}.{p}"]
    for p in ("weight", "bias"):
        shift, scale = sd[f"final_layer.adaLN_modulation.1.{p}"].chunk(2)
        out[f"norm_out.linear.{p}"] = torch.cat([scale, shift])
    D = cfg.hidden_size
    for i in range(cfg.depth):
        o, n = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        for p in ("weight", "bias"):
            out[f"{n}norm1.linear.{p}"] = sd[f"{o}img_mod.lin.{p}"]
            out[f"{n}norm1_context.linear.{p}"] = sd[f"{o}txt_mod.lin.{p}"]
            for x, part in zip("qkv", sd[f"{o}img_attn.qkv.{p}"].split(D)):
                out[f"{n}attn.to_{x}.{p}"] = part
            for x, part in zip("qkv", sd[f"{o}txt_attn.qkv.{p}"].split(D)):
                out[f"{n}attn.add_{x}_proj.{p}"] = part
            out[f"{n}attn.to_out.0.{p}"] = sd[f"{o}img_attn.proj.{p}"]
            out[f"{n}attn.to_add_out.{p}"] = sd[f"{o}txt_attn.proj.{p}"]
            out[f"{n}ff.net.0.proj.{p}"] = sd[f"{o}img_mlp.0.{p}"]
            out[f"{n}ff.net.2.{p}"] = sd[f"{o}img_mlp.2.{p}"]
            out[f"{n}ff_context.net.0.proj.{p}"] = sd[f"{o}txt_mlp.0.{p}"]
            out[f"{n}ff_context.net.2.{p}"] = sd[f"{o}txt_mlp.2.{p}"]
        out[f"{n}attn.norm_q.weight"] = sd[f"{o}img_attn.norm.query_norm.scale"]
        out[f"{n}attn.norm_k.weight"] = sd[f"{o}img_attn.norm.key_norm.scale"]
        out[f"{n}attn.norm_added_q.weight"] = sd[f"{o}txt_attn.norm.query_norm.scale"]
        out[f"{n}attn.norm_added_k.weight"] = sd[f"{o}txt_attn.norm.key_norm.scale"]
    for i in range(cfg.depth_single_blocks):
        o, n = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        for p in ("weight", "bias"):
            out[f"{n}norm.linear.{p}"] = sd[f"{o}modulation.lin.{p}"]
            q, k, v, mlp = sd[f"{o}linear1.{p}"].split([D, D, D, int(D * cfg.mlp_ratio)])
            out[f"{n}attn.to_q.{p}"], out[f"{n}attn.to_k.{p}"], out[f"{n}attn.to_v.{p}"] = q, k, v
            out[f"{n}proj_mlp.{p}"] = mlp
            out[f"{n}proj_out.{p}"] = sd[f"{o}linear2.{p}"]
        out[f"{n}attn.norm_q.weight"] = sd[f"{o}norm.query_norm.scale"]
        out[f"{n}attn.norm_k.weight"] = sd[f"{o}norm.key_norm.scale"]
    out.update({k: v for k, v in sd.items() if k.startswith("connector.")})
    return out


def test_official_checkpoint_keys_round_trip(tmp_path, tiny_dit):
    from safetensors.torch import load_file, save_file

    from editseg.backbones import step1x

    state = {k: v.contiguous() for k, v in tiny_dit.state_dict().items()}
    assert "double_blocks.0.img_attn.qkv.weight" in state and "connector.S.input_embedder.weight" in state
    assert "single_blocks.2.linear1.weight" in state and "final_layer.adaLN_modulation.1.weight" in state
    save_file(state, tmp_path / step1x_pipeline.DIT_FILENAME)
    assert step1x.claims(str(tmp_path))
    loaded = step1x_pipeline.dit_from_state_dict(load_file(tmp_path / step1x_pipeline.DIT_FILENAME), TINY, torch.float32)
    inputs = _inputs()
    with torch.no_grad():
        assert torch.equal(loaded(**inputs), tiny_dit(**inputs))
    with pytest.raises(ValueError, match="missing"):
        step1x_pipeline.dit_from_state_dict({k: v for k, v in state.items() if "txt_in" not in k}, TINY, torch.float32)
    with pytest.raises(OSError):  # no vae.safetensors in the folder
        step1x.load_pipeline(str(tmp_path), torch.float32, local_files_only=True)


def test_diffusers_format_keys_map_back(tiny_dit):
    cfg = Step1XConfig(**{**TINY.__dict__, "pooled_scale": False})
    model = _randomised(Step1XEditDiT(cfg), seed=5)
    diffusers_state = _to_diffusers_names(model.state_dict(), cfg)
    assert "transformer_blocks.1.attn.add_k_proj.weight" in diffusers_state
    config = step1x_pipeline.config_from_diffusers({
        "num_layers": 2, "num_single_layers": 3, "attention_head_dim": 16, "num_attention_heads": 2,
        "joint_attention_dim": 24, "in_channels": 16, "vector_in_dim": 8, "connector_in_channels": 20,
        "connector_hidden_size": 24, "connector_heads_num": 2, "connector_depth": 2, "axes_dims_rope": [4, 6, 6],
    })
    assert config == cfg
    mapped = step1x_pipeline.diffusers_to_official(diffusers_state, cfg.depth, cfg.depth_single_blocks)
    loaded = step1x_pipeline.dit_from_state_dict(mapped, cfg, torch.float32)
    inputs = _inputs()
    with torch.no_grad():
        assert torch.equal(loaded(**inputs), model(**inputs))
    with pytest.raises(ValueError, match="text-token mapping"):
        step1x_pipeline.config_from_diffusers({"enable_text_token_mapping": True})


def test_registry_knows_step1x():
    from editseg.backbones import aliases, known_models

    assert aliases()["step1x-edit"] == "stepfun-ai/Step1X-Edit"
    assert aliases()["step1x-edit-v1p1"] == "stepfun-ai/Step1X-Edit-v1p1-diffusers"
    assert "planned" not in known_models()["step1x-edit"]


def test_apostrophe_expressions_still_map_to_their_characters(step1x_backbone, photo):
    """After an apostrophe the official code tokenises one character per piece; the map survives."""
    bb = step1x_backbone
    bb.prepare_image(photo)
    expression = "the man's hat"
    prompt = bb.encode_text([expression], [f"remove {expression}"]).prompts[0]
    indices = prompt.indices("expression")
    start = min(prompt.offsets[i][0] for i in indices)
    end = max(prompt.offsets[i][1] for i in indices)
    assert prompt.text[start:end].strip() == expression
    assert len(prompt.indices_for_words(["hat"])) >= 3  # h, a, t: one token each inside the "quote"
