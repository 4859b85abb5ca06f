"""A frozen video diffusion prior with score distillation.

``VideoPrior`` is the contract (``prior.sds(clip) -> SDSResult``); ``BuiltinPrior`` is the
project's own pixel-space video U-Net, trained with :func:`train`; the pretrained diffusers
backends live in :mod:`dreamcloth.prior.pretrained`.
"""

from .builtin import BuiltinPrior, load_builtin_model, save_builtin_model, training_scheduler
from .conditioning import MODES, Conditioning, MaskSamplingConfig, parse_given, sample_given_masks
from .data import ClipSource, VideoClips, WaveClips
from .metrics import psnr, ssim
from .runtime import Runtime, RuntimeConfig, freeze
from .sampling import PredictionScore, SampleConfig, predict_frames, sample_clips, score_prediction
from .sds import SDSConfig, SDSResult, VideoPrior, sds_weight
from .synthetic import WaveLaw, sample_waves, wave_clip
from .train import TrainConfig, TrainResult, UNetConfig, diffusion_loss, train
from .unet import VideoUNet

__all__ = [
    "BuiltinPrior",
    "ClipSource",
    "Conditioning",
    "MODES",
    "MaskSamplingConfig",
    "PredictionScore",
    "Runtime",
    "RuntimeConfig",
    "SDSConfig",
    "SDSResult",
    "SampleConfig",
    "TrainConfig",
    "TrainResult",
    "UNetConfig",
    "VideoClips",
    "VideoPrior",
    "VideoUNet",
    "WaveClips",
    "WaveLaw",
    "diffusion_loss",
    "freeze",
    "load_builtin_model",
    "parse_given",
    "predict_frames",
    "psnr",
    "sample_clips",
    "sample_given_masks",
    "sample_waves",
    "save_builtin_model",
    "score_prediction",
    "sds_weight",
    "ssim",
    "train",
    "training_scheduler",
    "wave_clip",
]
