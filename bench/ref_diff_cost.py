"""Weight memory (exact) and, on a GPU, time per image of Ref-Diff's three models at full size.

The models are built from the published architectures with random weights (no download):
Stable Diffusion 1.5 (UNet, VAE, CLIP ViT-L/14 text encoder), SAM ViT-H and CLIP ViT-B/16 (the
paper's choices). Parameter counts and weight bytes are exact for those architectures. With
``--time`` (needs the device to hold them) one image goes through what Ref-Diff runs: SAM's
image encoder + a 32x32 point grid in batches of 64, SD 1.5 at 1024 px for t=2 guided DDIM steps
with the probes, and CLIP on ``--proposals`` proposals; timings are medians of ``--repeats``.

    python bench/ref_diff_cost.py                       # parameter counts only (meta tensors, instant)
    python bench/ref_diff_cost.py --time --device cuda  # + seconds per image and peak memory
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def sd15_parts(device):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2, sample_size=512,
    )
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77))
    return {"sd15-unet": unet, "sd15-vae": vae, "sd15-text": text}


def sam_vit_h():
    from transformers import SamConfig, SamModel, SamVisionConfig

    vision = SamVisionConfig(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                             global_attn_indexes=[7, 15, 23, 31], mlp_dim=5120)
    return SamModel(SamConfig(vision_config=vision.to_dict()))


def clip_vit_b16():
    from transformers import CLIPConfig, CLIPModel

    return CLIPModel(CLIPConfig(vision_config={"patch_size": 16, "image_size": 224}, projection_dim=512))


def count(models: dict) -> None:
    total = 0
    print(f"{'model':<12} {'params (M)':>11} {'fp32 GB':>8} {'fp16 GB':>8}")
    for name, model in models.items():
        n = sum(p.numel() for p in model.parameters())
        total += n
        print(f"{name:<12} {n / 1e6:>11.1f} {n * 4 / 1e9:>8.2f} {n * 2 / 1e9:>8.2f}")
    print(f"{'total':<12} {total / 1e6:>11.1f} {total * 4 / 1e9:>8.2f} {total * 2 / 1e9:>8.2f}")


def timed(fn, repeats: int, device) -> float:
    times = []
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


@torch.no_grad()
def run_timing(args) -> None:
    from editseg.probing.cross_attention import CrossAttentionRecorder, probing_cross_attention

    device = torch.device(args.device)
    half = torch.float16 if device.type == "cuda" else torch.float32
    parts = {k: v.to(device, half).eval() for k, v in sd15_parts(device).items()}
    sam = sam_vit_h().to(device).eval()
    clip = clip_vit_b16().to(device, half).eval()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def sd_image():
        image = torch.randn(1, 3, 1024, 1024, device=device, dtype=half)
        latents = parts["sd15-vae"].encode(image).latent_dist.mean * 0.18215
        context = parts["sd15-text"](torch.zeros(2, 77, dtype=torch.long, device=device)).last_hidden_state
        recorder = CrossAttentionRecorder(token_index=torch.tensor([[2], [2]]), latent_size=(128, 128), levels=frozenset({2}))
        with probing_cross_attention(parts["sd15-unet"], recorder):
            for t in (51, 1):
                parts["sd15-unet"](torch.cat([latents, latents]), t, encoder_hidden_states=context)

    def sam_image():
        embeddings = sam.get_image_embeddings(torch.randn(1, 3, 1024, 1024, device=device))
        for _ in range(1024 // 64):
            points = torch.rand(1, 64, 1, 2, device=device) * 1024
            sam(image_embeddings=embeddings, input_points=points, multimask_output=True)

    def clip_image():
        pixels = torch.randn(args.proposals, 3, 224, 224, device=device, dtype=half)
        clip.get_image_features(pixel_values=pixels)
        clip.get_image_features(pixel_values=pixels[:1])  # the masked-attention pass (one image, n tokens)

    for name, fn in (("SD 1.5 (2 guided steps, 1024 px)", sd_image), ("SAM ViT-H (32x32 grid)", sam_image),
                     ("CLIP ViT-B/16 crops", clip_image)):
        print(f"{name:<36} {timed(fn, args.repeats, device):.3f} s")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--time", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--proposals", type=int, default=60)
    args = parser.parse_args()
    with torch.device("meta"):
        models = {**sd15_parts(None), "sam-vit-h": sam_vit_h(), "clip-vit-b16": clip_vit_b16()}
    count(models)
    if args.time:
        run_timing(args)


if __name__ == "__main__":
    main()
