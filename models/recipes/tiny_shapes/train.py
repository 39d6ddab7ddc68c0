"""Train the tiny-shapes text-to-image pipeline from scratch (tokenizer, CLIP, VAE, UNet)."""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tokenizers
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from models.recipes.tiny_shapes import data  # noqa: E402

IMAGE_SIZE = 64
MAX_TOKENS = 24  # the grammar needs <= 14; the pipeline pads to tokenizer.model_max_length.


def build_tokenizer(seed: int):
    """Byte-level BPE trained on the grammar's own prompts, wrapped as a CLIPTokenizer."""
    from transformers import CLIPTokenizer

    rng = np.random.default_rng(seed + 101)
    corpus = [data.sample_spec(rng).prompt() for _ in range(4000)] + data.all_words()
    tokenizer = CLIPTokenizer().train_new_from_iterator(
        corpus, vocab_size=512, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.model_max_length = MAX_TOKENS
    # The trainer numbers the end-of-word characters in hash-set order, which changes from run
    # to run; renumber the vocabulary in sorted order so a seed gives the same ids every time.
    # BPE ranks merges by the merges list, not by id, so renumbering keeps tokenization intact.
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        path = Path(tmp) / "tokenizer.json"
        spec = json.loads(path.read_text())
        special = {t["content"]: t["id"] for t in spec["added_tokens"]}
        assert sorted(special.values()) == list(range(len(special)))
        rest = sorted((t for t in spec["model"]["vocab"] if t not in special), key=lambda t: (len(t), t))
        spec["model"]["vocab"] = {**special, **{t: len(special) + i for i, t in enumerate(rest)}}
        path.write_text(json.dumps(spec))
        tokenizer = CLIPTokenizer.from_pretrained(tmp, local_files_only=True)
    tokenizer.model_max_length = MAX_TOKENS
    return tokenizer


def build_models(tokenizer):
    """The three networks, sized so one 64x64 image takes well under a second on a CPU."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=96,
            intermediate_size=192,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=MAX_TOKENS,
            projection_dim=96,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    # Three blocks -> 4x downscale: 64x64 pixels become 16x16x4 latents.
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
        mid_block_add_attention=False,
    )
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 4,
        in_channels=4,
        out_channels=4,
        # No attention at 16x16: on CPU it costs more than everything else together, and the
        # 8x8 / 4x4 levels already see the whole picture.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 96),
        layers_per_block=1,
        norm_num_groups=16,
        cross_attention_dim=96,
        attention_head_dim=2,
        transformer_layers_per_block=1,
    )
    return text_encoder, vae, unet


def make_scheduler():
    from diffusers import DDIMScheduler

    # Zero terminal SNR + v-prediction: with Stable Diffusion's schedule the last step still
    # leaks the image's mean colour, so at 16x16 the model learns to read the background colour
    # from the starting noise instead of the prompt. "trailing" starts sampling at pure noise.
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="trailing",
        rescale_betas_zero_snr=True,
        prediction_type="v_prediction",
    )


def make_dataset(count: int, seed: int) -> tuple[list[str], torch.Tensor]:
    """A fixed, seeded set of (prompt, image) pairs; images in [-1, 1], NCHW."""
    rng = np.random.default_rng(seed)
    prompts, images = [], np.empty((count, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for i in range(count):
        spec = data.sample_spec(rng)
        prompts.append(spec.prompt())
        images[i] = np.asarray(data.draw(spec, IMAGE_SIZE)[0])
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return prompts, tensor


def lr_at(step: int, total: int, peak: float, warmup: int = 200) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_vae(vae, images: torch.Tensor, steps: int, batch: int, seed: int, log: dict, crop: int = 32) -> None:
    order = np.random.default_rng(seed + 1)
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    vae.train()
    curve, window, start = [], [], time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, 2e-3, warmup=100)
        # Random 32x32 crops: the VAE is fully convolutional and crops cost a quarter.
        top, left = (int(v) for v in order.integers(0, IMAGE_SIZE - crop + 1, 2))
        x = images[order.integers(0, len(images), batch), :, top : top + crop, left : left + crop]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        # L1 keeps flat colours and hard edges crisp; the tiny KL only bounds the latent scale.
        rec = F.l1_loss(recon, x) + 0.5 * F.mse_loss(recon, x)
        kl = posterior.kl().mean() / x[0].numel()
        loss = rec + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        window.append(rec.item())
        if (step + 1) % log["log_every"] == 0 or step == steps - 1:
            curve.append(
                {"step": step + 1, "recon": round(float(np.mean(window)), 6), "seconds": round(time.time() - start, 1)}
            )
            print(
                f"vae step {step + 1}/{steps} recon {np.mean(window):.5f} "
                f"{(time.time() - start) / (step + 1) * 1000:.0f} ms/step",
                flush=True,
            )
            window = []
    vae.eval()
    log["vae"] = {"steps": steps, "batch": batch, "curve": curve, "seconds": round(time.time() - start, 1)}


def refine_decoder(
    vae, images: torch.Tensor, latents: torch.Tensor, steps: int, batch: int, seed: int, log: dict, crop: int = 32
) -> None:
    """Train the decoder further on frozen-encoder latents: sharper images, same latent space.

    The encoder is untouched, so the UNet (trained on `latents`) stays valid whatever this does,
    and a little latent noise teaches the decoder to clean up imperfect diffusion samples.
    """
    order = np.random.default_rng(seed + 4)
    gen = torch.Generator().manual_seed(seed + 5)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    vae.decoder.train()
    lat_crop, factor = crop // 4, 4
    curve, window, start = [], [], time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, 1e-3, warmup=50)
        top, left = (int(v) for v in order.integers(0, (IMAGE_SIZE - crop) // factor + 1, 2))
        idx = torch.from_numpy(order.integers(0, len(images), batch))
        z = latents[idx, :, top : top + lat_crop, left : left + lat_crop]
        z = z + 0.1 * z.std() * torch.randn(z.shape, generator=gen)
        x = images[idx, :, top * factor : top * factor + crop, left * factor : left * factor + crop]
        recon = vae.decode(z).sample
        loss = F.l1_loss(recon, x) + 0.5 * F.mse_loss(recon, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        window.append(loss.item())
        if (step + 1) % log["log_every"] == 0 or step == steps - 1:
            curve.append(
                {"step": step + 1, "recon": round(float(np.mean(window)), 6), "seconds": round(time.time() - start, 1)}
            )
            print(f"decoder step {step + 1}/{steps} recon {np.mean(window):.5f}", flush=True)
            window = []
    vae.eval()
    log["decoder"] = {"steps": steps, "batch": batch, "curve": curve, "seconds": round(time.time() - start, 1)}


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([vae.encode(images[i : i + 256]).latent_dist.mean for i in range(0, len(images), 256)])


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.lerp_(p, 1.0 - decay)


def train_unet(
    text_encoder,
    unet,
    tokenizer,
    scheduler,
    prompts: list[str],
    latents: torch.Tensor,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    log: dict,
    checkpoint=None,
):
    ids_all = tokenizer(
        prompts + [""], padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt"
    ).input_ids
    empty_ids = ids_all[-1]
    ids_all = ids_all[:-1]
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    order = np.random.default_rng(seed + 2)
    gen = torch.Generator().manual_seed(seed + 3)
    alphas = scheduler.alphas_cumprod
    # The plain attention kernel is faster than SDPA for these tiny heads on CPU.
    from diffusers.models.attention_processor import AttnProcessor

    unet.set_attn_processor(AttnProcessor())
    unet.train()
    text_encoder.train()
    curve, window, start = [], [], time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        idx = torch.from_numpy(order.integers(0, len(prompts), batch))
        ids = ids_all[idx].clone()
        # Classifier-free guidance: ~10% of prompts become "", so cfg and negatives work.
        drop = torch.from_numpy(order.random(batch) < 0.1)
        ids[drop] = empty_ids
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        cond = text_encoder(ids).last_hidden_state
        pred = unet(xt, t, encoder_hidden_states=cond).sample
        target = a.sqrt() * noise - (1 - a).sqrt() * x0  # v-prediction
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        ema_update(ema_unet, unet, decay)
        ema_update(ema_text, text_encoder, decay)
        window.append(loss.item())
        if (step + 1) % log["log_every"] == 0 or step == steps - 1:
            curve.append(
                {"step": step + 1, "loss": round(float(np.mean(window)), 6), "seconds": round(time.time() - start, 1)}
            )
            print(
                f"unet step {step + 1}/{steps} loss {np.mean(window):.5f} "
                f"{(time.time() - start) / (step + 1) * 1000:.0f} ms/step",
                flush=True,
            )
            window = []
        if checkpoint is not None and (step + 1) % log["checkpoint_every"] == 0 and step + 1 < steps:
            checkpoint(ema_text, ema_unet, step + 1)
    log["unet"] = {"steps": steps, "batch": batch, "lr": lr, "curve": curve, "seconds": round(time.time() - start, 1)}
    return ema_text, ema_unet


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("models/tiny-shapes"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=600)
    parser.add_argument("--decoder-steps", type=int, default=1500)
    parser.add_argument("--unet-steps", type=int, default=4000)
    parser.add_argument("--vae-batch", type=int, default=24)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--dataset", type=int, default=24000, help="fixed training images")
    parser.add_argument("--log-every", type=int, default=50)
    # One thread: results depend on the thread count, and on a shared CPU a single thread
    # avoids the spin-wait stalls that make two threads several times slower.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--checkpoints", type=Path, default=None, help="also save the EMA pipeline here every --checkpoint-every steps"
    )
    parser.add_argument("--checkpoint-every", type=int, default=1000)
    args = parser.parse_args(argv)

    import diffusers
    import transformers
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.time()
    log: dict = {
        "seed": args.seed,
        "args": {k: str(v) for k, v in vars(args).items()},
        "log_every": args.log_every,
        "checkpoint_every": args.checkpoint_every,
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
        },
    }

    tokenizer = build_tokenizer(args.seed)
    text_encoder, vae, unet = build_models(tokenizer)
    scheduler = make_scheduler()
    log["parameters"] = {"text_encoder": count(text_encoder), "vae": count(vae), "unet": count(unet)}
    print(json.dumps(log["parameters"]), flush=True)
    prompts, images = make_dataset(args.dataset, args.seed)
    print(f"dataset ready: {len(prompts)} images, {time.time() - started:.0f}s", flush=True)

    train_vae(vae, images, args.vae_steps, args.vae_batch, args.seed, log)
    latents = encode_latents(vae, images)
    refine_decoder(vae, images, latents, args.decoder_steps, args.vae_batch, args.seed, log)
    # Scale latents to unit variance, as Stable Diffusion's scaling_factor does.
    scale = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scale)
    latents = latents * scale
    log["vae"]["scaling_factor"] = scale
    print(f"latents {tuple(latents.shape)} scaling_factor {scale:.4f}", flush=True)

    def save(text_model, unet_model, out: Path) -> None:
        unet_model.set_default_attn_processor()
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_model,
            tokenizer=tokenizer,
            unet=unet_model,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(out, safe_serialization=True)
        (out / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")

    def checkpoint(text_model, unet_model, step: int) -> None:
        if args.checkpoints is not None:
            save(copy.deepcopy(text_model), copy.deepcopy(unet_model), args.checkpoints / f"step-{step}")

    ema_text, ema_unet = train_unet(
        text_encoder,
        unet,
        tokenizer,
        scheduler,
        prompts,
        latents,
        args.unet_steps,
        args.batch,
        args.lr,
        args.seed,
        log,
        checkpoint,
    )
    log["wall_seconds"] = round(time.time() - started, 1)
    save(ema_text, ema_unet, args.out)
    print(f"saved to {args.out} in {log['wall_seconds']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
