"""Latent diffusion refinement of VITS latents (LCM-SVC, arXiv 2408.12354).

* :mod:`~infer.diffusion.schedulers`: noise schedule and the DDPM, DDIM and LCM samplers.
* :mod:`~infer.diffusion.denoiser`: the conditional WaveNet-style denoiser.
* :mod:`~infer.diffusion.head`: the saved head (weights + schedule + latent scale) of a voice model.
* :mod:`~infer.diffusion.refine`: the sampling loop with classifier-free guidance.
"""

from infer.diffusion.denoiser import Denoiser, DenoiserConfig
from infer.diffusion.head import (
    LCM_FILENAME,
    TEACHER_FILENAME,
    DiffusionHead,
    DiffusionHeadError,
    load_head,
    load_head_for_sampler,
)
from infer.diffusion.refine import RefineError, RefineParams, guided_eps, refine
from infer.diffusion.schedulers import (
    ConsistencyConfig,
    DDIMSampler,
    DDPMSampler,
    LCMSampler,
    NoiseSchedule,
    NoiseScheduleConfig,
    StepOutput,
    make_sampler,
)

__all__ = [
    "LCM_FILENAME",
    "TEACHER_FILENAME",
    "ConsistencyConfig",
    "DDIMSampler",
    "DDPMSampler",
    "Denoiser",
    "DenoiserConfig",
    "DiffusionHead",
    "DiffusionHeadError",
    "LCMSampler",
    "NoiseSchedule",
    "NoiseScheduleConfig",
    "RefineError",
    "RefineParams",
    "StepOutput",
    "guided_eps",
    "load_head",
    "load_head_for_sampler",
    "make_sampler",
    "refine",
]
