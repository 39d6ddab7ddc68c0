"""Export a diffusers Stable-Diffusion-family folder to ONNX: text encoder, UNet, VAE decoder and encoder.

Usage: python backends/onnx/convert.py SRC_MODEL_DIR OUT_DIR [--opset 17] [--int8] [--fp16] [--optimize]

The output folder holds one `<part>/model.onnx` per network, the tokenizer and scheduler config
copied as they are, and `onnx_model.json`, the manifest the backend reads. It runs in the backend's
Python (torch, diffusers, onnx, onnxruntime), never in the host.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

MANIFEST = "onnx_model.json"
PARTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")
# Above this, ONNX's protobuf limit forces weights into an external data file.
_TWO_GB = 2 * 1024**3 - 1024


def _log(message: str) -> None:
    print(f"[convert] {message}", file=sys.stderr, flush=True)


def _check_source(src: Path) -> dict:
    index_path = src / "model_index.json"
    if not index_path.is_file():
        raise SystemExit(f"{src}: no model_index.json; expected a diffusers pipeline folder")
    index = json.loads(index_path.read_text())
    class_name = index.get("_class_name", "")
    if "XL" in class_name or "text_encoder_2" in index or "StableDiffusion" not in class_name:
        raise SystemExit(
            f"{src}: {class_name or 'unknown pipeline'} is not supported; the ONNX converter handles the "
            "Stable Diffusion 1.x/2.x family (one CLIP text encoder, UNet2DConditionModel, AutoencoderKL)"
        )
    for part in ("text_encoder", "tokenizer", "unet", "vae", "scheduler"):
        if not (src / part).is_dir():
            raise SystemExit(f"{src}: missing the {part}/ folder")
    return index


def _export(module, args: tuple, path: Path, names_in: list[str], names_out: list[str], axes: dict, opset: int):
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=names_in,
            output_names=names_out,
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,  # the TorchScript exporter: ~10x faster here and needs no onnxscript
        )


def export_all(src: Path, out: Path, opset: int) -> dict:
    """Export the four networks in fp32; returns the manifest."""
    import numpy as np
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    text_encoder = CLIPTextModel.from_pretrained(src / "text_encoder", local_files_only=True).eval()
    unet = UNet2DConditionModel.from_pretrained(src / "unet", local_files_only=True).eval()
    vae = AutoencoderKL.from_pretrained(src / "vae", local_files_only=True).eval()
    for model in (text_encoder, unet, vae):
        model.to(torch.float32)

    hidden = int(text_encoder.config.hidden_size)
    seq_len = int(text_encoder.config.max_position_embeddings)
    latent_ch = int(unet.config.in_channels)
    vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
    size = int(unet.config.sample_size if isinstance(unet.config.sample_size, int) else unet.config.sample_size[0])
    # The trace shapes only seed the graph; the axes below stay dynamic.
    trace_side = max(size, 2 ** len(unet.config.block_out_channels))

    class TextEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = text_encoder

        def forward(self, input_ids):
            out = self.model(input_ids=input_ids, output_hidden_states=True, return_dict=True)
            # All layers stacked so the backend can honour clip_skip without a second graph.
            return out.last_hidden_state, torch.stack(out.hidden_states, dim=0)

    class Unet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = unet

        def forward(self, sample, timestep, encoder_hidden_states):
            return self.model(sample, timestep, encoder_hidden_states, return_dict=False)[0]

    class VaeDecoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = vae

        def forward(self, latent_sample):
            return self.model.decode(latent_sample, return_dict=False)[0]

    class VaeEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = vae

        def forward(self, sample):
            # The Gaussian's moments (mean, logvar); sampling happens in the backend with its own RNG.
            return self.model._encode(sample)

    t0 = time.perf_counter()
    ids = torch.zeros((1, seq_len), dtype=torch.int64)
    _export(
        TextEncoder(),
        (ids,),
        out / "text_encoder" / "model.onnx",
        ["input_ids"],
        ["last_hidden_state", "hidden_states"],
        {"input_ids": {0: "batch"}, "last_hidden_state": {0: "batch"}, "hidden_states": {1: "batch"}},
        opset,
    )
    inner = getattr(text_encoder, "text_model", text_encoder)  # transformers 4.x nests it, 5.x does not
    norm = inner.final_layer_norm
    # The last LayerNorm as .npz: clip_skip applies it to an earlier layer's output in numpy.
    np.savez(
        out / "text_encoder" / "final_layer_norm.npz",
        weight=norm.weight.detach().numpy(),
        bias=norm.bias.detach().numpy(),
        eps=np.float32(norm.eps),
    )
    _log(f"text_encoder exported ({time.perf_counter() - t0:.1f} s)")

    t0 = time.perf_counter()
    sample = torch.randn(2, latent_ch, trace_side, trace_side)
    timestep = torch.tensor([999.0, 999.0], dtype=torch.float32)
    context = torch.randn(2, seq_len, int(unet.config.cross_attention_dim))
    _export(
        Unet(),
        (sample, timestep, context),
        out / "unet" / "model.onnx",
        ["sample", "timestep", "encoder_hidden_states"],
        ["out_sample"],
        {
            "sample": {0: "batch", 2: "height", 3: "width"},
            "timestep": {0: "batch"},
            "encoder_hidden_states": {0: "batch", 1: "sequence"},
            "out_sample": {0: "batch", 2: "height", 3: "width"},
        },
        opset,
    )
    _log(f"unet exported ({time.perf_counter() - t0:.1f} s)")

    t0 = time.perf_counter()
    latent_vae_ch = int(vae.config.latent_channels)
    _export(
        VaeDecoder(),
        (torch.randn(1, latent_vae_ch, trace_side, trace_side),),
        out / "vae_decoder" / "model.onnx",
        ["latent_sample"],
        ["sample"],
        {"latent_sample": {0: "batch", 2: "height", 3: "width"}, "sample": {0: "batch", 2: "height", 3: "width"}},
        opset,
    )
    _export(
        VaeEncoder(),
        (torch.randn(1, int(vae.config.in_channels), trace_side * vae_scale, trace_side * vae_scale),),
        out / "vae_encoder" / "model.onnx",
        ["sample"],
        ["moments"],
        {"sample": {0: "batch", 2: "height", 3: "width"}, "moments": {0: "batch", 2: "height", 3: "width"}},
        opset,
    )
    _log(f"vae exported ({time.perf_counter() - t0:.1f} s)")

    shift = vae.config.get("shift_factor") if hasattr(vae.config, "get") else None
    return {
        "format": "localhost-ai-onnx",
        "version": 1,
        "pipeline": "stable-diffusion",
        "opset": opset,
        "latent_channels": latent_ch,
        "vae_latent_channels": latent_vae_ch,
        "vae_scale_factor": vae_scale,
        "vae_scaling_factor": float(vae.config.scaling_factor),
        "vae_shift_factor": float(shift) if shift is not None else None,
        "sample_size": size * vae_scale,
        "text_hidden_size": hidden,
        "text_max_length": seq_len,
        "text_num_layers": int(text_encoder.config.num_hidden_layers),
        "time_cond_proj_dim": unet.config.time_cond_proj_dim,
        "precision": "fp32",
        "parts": list(PARTS),
    }


def optimize(path: Path) -> None:
    """Save ORT's graph-optimized model in place: sessions start faster and skip re-fusing."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    # EXTENDED, not ALL: ALL writes layouts tied to this CPU, and the file should stay portable.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    tmp = path.with_name("model.opt.onnx")
    options.optimized_model_filepath = str(tmp)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    tmp.replace(path)


def to_fp16(path: Path) -> None:
    """Weights and math in fp16 with fp32 inputs/outputs (for GPUs; slower on most CPUs)."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(path))
    # Resize's `scales` input must stay float32 (the UNet/VAE upsamplers), or the graph is invalid.
    blocked = [*DEFAULT_OP_BLOCK_LIST, "Resize"]
    feeds_resize = {name for node in model.graph.node if node.op_type == "Resize" for name in node.input[1:]}
    constants = [n.name for n in model.graph.node if n.op_type == "Constant" and set(n.output) & feeds_resize]
    model = convert_float_to_float16(
        model, keep_io_types=True, disable_shape_infer=True, op_block_list=blocked, node_block_list=constants
    )
    onnx.save(model, str(path), save_as_external_data=model.ByteSize() > _TWO_GB)


def to_int8(path: Path) -> None:
    """Dynamic int8 quantization of the MatMul/Gemm weights (attention and feed-forward layers)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path.with_name("model.int8.onnx")
    quantize_dynamic(
        str(path),
        str(tmp),
        weight_type=QuantType.QInt8,
        # Convs stay fp32: ConvInteger is slow in ORT's CPU kernels and hurts image quality most.
        op_types_to_quantize=["MatMul", "Gemm"],
        use_external_data_format=path.stat().st_size > _TWO_GB,
    )
    for extra in path.parent.glob("*.data"):
        extra.unlink()
    tmp.replace(path)


def convert(src: Path, out: Path, opset: int = 17, int8: bool = False, fp16: bool = False, opt: bool = False) -> dict:
    src, out = src.resolve(), out.resolve()
    _check_source(src)
    if int8 and fp16:
        raise SystemExit("--int8 and --fp16 are exclusive")
    out.mkdir(parents=True, exist_ok=True)
    manifest = export_all(src, out, opset)
    if opt:
        for part in PARTS:
            optimize(out / part / "model.onnx")
        _log("graphs optimized")
    if fp16:
        for part in PARTS:
            to_fp16(out / part / "model.onnx")
        manifest["precision"] = "fp16"
    if int8:
        # The UNet and text encoder carry the MatMul weights; the VAE stays fp32 for image quality.
        for part in ("text_encoder", "unet"):
            to_int8(out / part / "model.onnx")
        manifest["precision"] = "int8"
        _log("int8 dynamic quantization done")
    for part in ("tokenizer", "scheduler"):
        shutil.copytree(src / part, out / part, dirs_exist_ok=True)
    manifest["source"] = str(src)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export a diffusers Stable Diffusion folder to ONNX.")
    parser.add_argument("src", type=Path, help="diffusers pipeline folder (model_index.json)")
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--int8", action="store_true", help="dynamic int8 quantization (CPU)")
    parser.add_argument("--fp16", action="store_true", help="fp16 weights (GPU)")
    parser.add_argument("--optimize", action="store_true", help="save ORT-optimized graphs")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    manifest = convert(args.src, args.out, args.opset, args.int8, args.fp16, args.optimize)
    _log(f"done in {time.perf_counter() - start:.1f} s -> {args.out}")
    print(json.dumps({"ok": True, "out": str(args.out.resolve()), "precision": manifest["precision"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
