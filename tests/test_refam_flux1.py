"""FLUX.1 text-to-image backbone for RefAM on a tiny random ``FluxPipeline`` (no downloads):
input parity with the pipeline, inversion against a naive Euler loop, per-token probes against
full-softmax references captured inside the model's own attention processor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import diffusers.models.transformers.transformer_flux as flux_module
from editseg.backbones.flux1_t2i import FluxT2IBackbone
from editseg.backbones.tiny_flux1 import build_tiny_flux_pipeline
from editseg.probing.token_attention import TokenProbePlan
from reference import capture_dispatch, full_attention, transformer_calls


@pytest.fixture(scope="module")
def pipeline():
    return build_tiny_flux_pipeline()


@pytest.fixture(scope="module")
def backbone(pipeline):
    return FluxT2IBackbone(pipeline, name="tiny-flux1", is_random=True)


@pytest.fixture()
def image():
    rng = np.random.default_rng(3)
    return Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8))


def capture_pipeline_inputs(pipeline, prompt, latents, steps):
    """Keyword arguments of every transformer call of the real pipeline (given start latents)."""
    with transformer_calls(pipeline.transformer) as calls:
        out = pipeline(prompt=prompt, latents=latents, height=48, width=64, num_inference_steps=steps, output_type="latent")
    return calls, out.images


def test_geometry_and_packing(backbone, image, pipeline):
    prepared = backbone.prepare_image(image)
    assert prepared.geometry.grid == (3, 4)
    assert prepared.latents.shape == (1, 12, 16)
    # Packing against a literal 2x2 patchify of the VAE latent.
    pixels = pipeline.image_processor.preprocess(image, 48, 64)
    z = pipeline.vae.encode(pixels).latent_dist.mode()
    z = (z - pipeline.vae.config.shift_factor) * pipeline.vae.config.scaling_factor
    c = z.shape[1]
    expected = torch.stack(
        [
            torch.stack([z[0, :, 2 * r + i, 2 * q + j] for i in range(2) for j in range(2)], dim=1).flatten()
            for r in range(3)
            for q in range(4)
        ]
    )
    torch.testing.assert_close(prepared.latents[0], expected.view(12, 4 * c))
    assert prepared.ids[:, 1].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert prepared.ids[:, 2].tolist() == [0, 1, 2, 3] * 3


def test_pipeline_parity(backbone, pipeline, image):
    """Text encoding, ids, schedule, guidance and the Euler step equal FluxPipeline's own."""
    prepared = backbone.prepare_image(image)
    start = backbone.noise(prepared, seed=5)
    calls, final = capture_pipeline_inputs(pipeline, "a photo of a red dog", start.clone(), steps=4)
    text = backbone.encode_text(["a photo of a red dog"])
    timesteps, sigmas = backbone.schedule(prepared.latents.shape[1], 4)
    assert len(calls) == 4
    for call, t in zip(calls, timesteps):
        torch.testing.assert_close(call["timestep"], (t.expand(1) / 1000))
        torch.testing.assert_close(call["encoder_hidden_states"], text.embeds)
        torch.testing.assert_close(call["pooled_projections"], text.pooled)
        torch.testing.assert_close(call["txt_ids"], text.ids)
        torch.testing.assert_close(call["img_ids"], prepared.ids)
        torch.testing.assert_close(call["guidance"], torch.full([1], 3.5))
    # Our Euler loop with backbone.velocity reproduces the pipeline's final latents.
    x = start.clone()
    with torch.inference_mode():
        for i, t in enumerate(timesteps):
            x = x + (sigmas[i + 1] - sigmas[i]) * backbone.velocity(x, t, text, prepared)
    torch.testing.assert_close(x, final, rtol=1e-5, atol=1e-5)
    assert text.num_real[0] == len(pipeline.tokenizer_2("a photo of a red dog")["input_ids"])
    assert text.input_ids[0][text.num_real[0] - 1] == pipeline.tokenizer_2.eos_token_id


def naive_inversion(pipeline, x0, embeds, pooled, txt_ids, img_ids, sigmas_up, gamma=0.0, target=None):
    """Literal reverse Euler: x ← x + (σ_{j+1} − σ_j)·v(x, σ_j), optionally controlled towards ``target``."""
    x = x0.clone()
    for s, s_next in zip(sigmas_up[:-1], sigmas_up[1:]):
        with torch.inference_mode():
            v = pipeline.transformer(
                hidden_states=x, timestep=torch.tensor([s * 1000.0]) / 1000, guidance=torch.full([1], 3.5),
                pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=txt_ids, img_ids=img_ids,
                return_dict=False,
            )[0]
        if gamma:
            u = (target - x) / (1 - s)
            v = v + gamma * (u - v)
        x = x + (s_next - s) * v
    return x


@pytest.mark.parametrize("gamma", [0.0, 0.5])
def test_inversion_matches_naive_euler_reverse(backbone, pipeline, image, gamma):
    prepared = backbone.prepare_image(image)
    text = backbone.encode_text(["a photo"])
    timesteps, sigmas = backbone.schedule(12, 6)
    stop = 2
    got = backbone.invert(prepared, text, timesteps, sigmas, stop, gamma=gamma, seed=1)
    sigmas_up = [0.0] + [float(s) for s in reversed(sigmas[stop:-1])]
    target = backbone.noise(prepared, 1)
    expected = naive_inversion(
        pipeline, prepared.latents, text.embeds, text.pooled, text.ids, prepared.ids, sigmas_up, gamma, target
    )
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got, prepared.latents)


def test_noised_is_the_forward_process(backbone, image):
    prepared = backbone.prepare_image(image)
    sigma = torch.tensor(0.75)
    eps = backbone.noise(prepared, 4)
    torch.testing.assert_close(backbone.noised(prepared, sigma, 4), 0.25 * prepared.latents + 0.75 * eps)


def test_token_probes_match_full_softmax(backbone, image):
    """Per-token image→token maps, their renormalised (softmax over tracked tokens) form and the
    text→text masses equal full softmax(QKᵀ/√d) references from q/k captured in the model's own
    processors; the model output is unchanged by the probes."""
    prepared = backbone.prepare_image(image)
    text = backbone.encode_text(["the red dog _ with to and pink", "a cat"])
    layout = backbone.layout_for(prepared, text)
    K = max(text.num_real)
    positions = torch.zeros(2, K, dtype=torch.long)
    valid = torch.zeros(2, K, dtype=torch.bool)
    for b, n in enumerate(text.num_real):
        positions[b, :n] = torch.arange(n)
        valid[b, :n] = True
    assert K > 16  # exercises the chunking over head_dim-wide value tensors
    plan = TokenProbePlan(layout, positions, valid)
    timesteps, sigmas = backbone.schedule(layout.image_len, 4)
    latents = backbone.noised(prepared, sigmas[1], 0)
    captured = []
    with capture_dispatch(flux_module, captured), torch.inference_mode():
        bare = backbone.velocity(latents.expand(2, -1, -1), timesteps[1], text, prepared)
    recorder = backbone.probe_forward(latents, timesteps[1], text, prepared, plan)
    with torch.inference_mode():
        again = backbone.velocity(latents.expand(2, -1, -1), timesteps[1], text, prepared)
    torch.testing.assert_close(bare, again)
    assert len(captured) == backbone.num_blocks
    for block, (q, k, _, _) in enumerate(captured):
        A = full_attention(q, k)  # B, H, S, S float64
        for b, n in enumerate(text.num_real):
            cols = A[b][:, layout.image][:, :, :n]  # H, Nimg, n
            torch.testing.assert_close(recorder.image_maps[block][b, :n], cols.mean(0).T.float(), rtol=1e-4, atol=1e-6)
            soft = (cols / cols.sum(-1, keepdim=True)).mean(0).T
            torch.testing.assert_close(recorder.image_maps_softmax[block][b, :n], soft.float(), rtol=1e-4, atol=1e-6)
            # the same, literally: softmax over the tracked tokens' logits
            logits = q[b].double().transpose(0, 1)[:, layout.image] @ k[b].double().transpose(0, 1)[:, :n].transpose(-1, -2)
            torch.testing.assert_close(soft, torch.softmax(logits / 16**0.5, -1).mean(0).T)
            mass = A[b][:, :n, :n].mean(0).mean(0)
            torch.testing.assert_close(recorder.text_mass[block][b, :n], mass.float(), rtol=1e-4, atol=1e-6)
            assert torch.all(recorder.image_maps[block][b, n:] == 0)


def test_editor_adapter_reads_clean_rows_of_flux2_klein():
    """The same per-token probe through the FLUX.2 [klein] editor's own processors (clean rows)."""
    import editseg.probing.processors as processors_module  # the probe processors' attention call
    from editseg.backbones import load_backbone
    from editseg.backbones.flux2 import probes_installed
    from editseg.probing.token_attention import EditorTokenProbe, T2ILayout, TokenAttentionRecorder

    backbone = load_backbone("tiny-random-flux2", device="cpu")
    rng = np.random.default_rng(0)
    image = backbone.prepare_image(Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)))
    text = backbone.encode_text(["red dog _ with"], ["remove red dog _ with"], image=image)
    layout = backbone.layout_for(image, text)
    positions = torch.tensor([text.prompts[0].indices("expression") + [0]])  # plus a template token
    valid = torch.ones_like(positions, dtype=torch.bool)
    t2i = T2ILayout(layout.text_len, layout.clean_len, layout.grid, image_offset=layout.noisy_len)
    recorder = TokenAttentionRecorder(TokenProbePlan(t2i, positions, valid))
    inputs = backbone.step_inputs(image, text, 0)
    captured = []
    with capture_dispatch(processors_module, captured), torch.inference_mode(), probes_installed(
        backbone.pipeline.transformer, EditorTokenProbe(layout, recorder)
    ):
        backbone.pipeline.transformer(**inputs, return_dict=False)
    assert len(captured) == backbone.num_blocks
    for block, (q, k, _, _) in enumerate(captured):
        A = full_attention(q, k)[0][:, layout.clean][:, :, positions[0]]
        torch.testing.assert_close(recorder.image_maps[block][0], A.mean(0).T.float(), rtol=1e-4, atol=1e-6)
