"""Domain objects a backend works with, decoded from (and encoded to) the backend.proto messages."""

from __future__ import annotations

from dataclasses import dataclass, field

from localhost_ai.proto import backend_pb2 as pb


@dataclass
class LoadOptions:
    """What LoadModel tells a backend: where the model is and how to run it."""

    model: str
    model_path: str = ""
    model_file: str = ""
    pipeline_type: str = ""
    scheduler_type: str = ""
    cfg_scale: float = 0.0
    f16: bool = False
    cuda: bool = False
    low_vram: bool = False
    threads: int = 0
    clip_skip: int = 0
    img2img: bool = False
    device: str = "auto"
    options: list[str] = field(default_factory=list)

    @classmethod
    def from_pb(cls, msg: pb.ModelOptions) -> LoadOptions:
        return cls(
            model=msg.Model,
            model_path=msg.ModelPath,
            model_file=msg.ModelFile,
            pipeline_type=msg.PipelineType,
            scheduler_type=msg.SchedulerType,
            cfg_scale=msg.CFGScale,
            f16=msg.F16Memory,
            cuda=msg.CUDA,
            low_vram=msg.LowVRAM,
            threads=msg.Threads,
            clip_skip=msg.CLIPSkip,
            img2img=msg.IMG2IMG,
            device=msg.Device or ("cuda" if msg.CUDA else "auto"),
            options=list(msg.Options),
        )

    def to_pb(self) -> pb.ModelOptions:
        return pb.ModelOptions(
            Model=self.model,
            ModelPath=self.model_path,
            ModelFile=self.model_file,
            PipelineType=self.pipeline_type,
            SchedulerType=self.scheduler_type,
            CFGScale=self.cfg_scale,
            F16Memory=self.f16,
            CUDA=self.cuda,
            LowVRAM=self.low_vram,
            Threads=self.threads,
            CLIPSkip=self.clip_skip,
            IMG2IMG=self.img2img,
            Device=self.device,
            Options=self.options,
        )

    def option_pairs(self) -> dict[str, str]:
        """LocalAI's `options: ["key:value"]` as a dict (a bare key means "true")."""
        pairs: dict[str, str] = {}
        for item in self.options:
            key, sep, value = item.partition(":")
            pairs[key.strip()] = value.strip() if sep else "true"
        return pairs


@dataclass
class GenerationRequest:
    """One batch: n images of one prompt; image i is generated from seed + i."""

    prompt: str
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    steps: int = 0
    seed: int = 0
    n: int = 1
    guidance_scale: float | None = None
    true_cfg_scale: float | None = None
    cfg_normalization: bool | None = None
    mode: int = 0
    output_format: str = "png"
    output_compression: int = 100
    options: dict[str, str] = field(default_factory=dict)
    src_image: bytes = b""
    strength: float | None = None

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.n)]

    @classmethod
    def from_pb(cls, msg: pb.GenerateImagesRequest) -> GenerationRequest:
        def optional(name: str):
            return getattr(msg, name) if msg.HasField(name) else None

        return cls(
            prompt=msg.positive_prompt,
            negative_prompt=msg.negative_prompt,
            width=msg.width,
            height=msg.height,
            steps=msg.steps,
            seed=msg.seed,
            n=max(1, msg.n),
            guidance_scale=optional("guidance_scale"),
            true_cfg_scale=optional("true_cfg_scale"),
            cfg_normalization=optional("cfg_normalization"),
            mode=msg.mode,
            output_format=msg.output_format or "png",
            output_compression=msg.output_compression or 100,
            options=dict(msg.options),
            src_image=msg.src_image,
            strength=optional("strength"),
        )

    @classmethod
    def from_localai_pb(cls, msg: pb.GenerateImageRequest, src_image: bytes = b"") -> GenerationRequest:
        """LocalAI's unary GenerateImage carries one image and no guidance field."""
        return cls(
            prompt=msg.positive_prompt,
            negative_prompt=msg.negative_prompt,
            width=msg.width or 512,
            height=msg.height or 512,
            steps=msg.step,
            seed=msg.seed,
            n=1,
            mode=msg.mode,
            src_image=src_image,
        )

    def to_pb(self) -> pb.GenerateImagesRequest:
        msg = pb.GenerateImagesRequest(
            positive_prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            width=self.width,
            height=self.height,
            steps=self.steps,
            seed=self.seed,
            n=self.n,
            mode=self.mode,
            output_format=self.output_format,
            output_compression=self.output_compression,
            options=self.options,
            src_image=self.src_image,
        )
        for name in ("guidance_scale", "true_cfg_scale", "cfg_normalization", "strength"):
            value = getattr(self, name)
            if value is not None:
                setattr(msg, name, value)
        return msg
