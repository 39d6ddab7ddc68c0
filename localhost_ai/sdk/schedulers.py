"""LocalAI's `scheduler_type` names and the diffusers scheduler classes they mean, shared by every backend."""

from __future__ import annotations

from typing import Any

# name -> (diffusers class, extra config). A "k_" prefix adds Karras sigmas. DPMSolverSDEScheduler
# needs the optional torchsde package, so "dpmpp_sde" uses the single-step solver, as LocalAI does.
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_sde": ("DPMSolverSinglestepScheduler", {}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
}


def scheduler_spec(name: str) -> tuple[str, dict[str, Any]]:
    """A LocalAI name (e.g. "euler_a", "k_dpmpp_2m") as a diffusers class name and config overrides."""
    key = name.strip().lower()
    karras = key.startswith("k_")
    key = key.removeprefix("k_")
    if key not in SCHEDULERS:
        known = ", ".join(sorted(SCHEDULERS))
        raise ValueError(f"unknown scheduler_type {name!r}; known: {known} (prefix k_ for Karras sigmas)")
    class_name, overrides = SCHEDULERS[key]
    return class_name, {**overrides, **({"use_karras_sigmas": True} if karras else {})}
