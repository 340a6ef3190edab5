"""sleepedge.models: the one place model definitions live (imports torch).

    config         dataclass configs + presets ("tiny", "paper")
    layers         LoRA linear, pre-norm transformer, masking, NT-Xent / InfoNCE
    neuronet       NeuroNet per-modality encoder + its SSL objective
    synthsleepnet  SynthSleepNet multimodal fusion (+ epoch heads, + temporal context)
    spectral       SpectralSleepNet: Welch band-power front end + causal centring + Mamba2 context
                   (the real-data-trained default: it reads the Sleep-EDF-78 band-power features)
    mamba2         causal Mamba2 + TemporalContext (forward / init_state / step)
    baselines      U2-Net 1-D encoder, CLIP, SimCLR, TS-TCC, supervised
    checkpoint     save_checkpoint / load_checkpoint (weights_only=True)
"""

from sleepedge.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from sleepedge.models.config import (
    ConfigError,
    EncoderConfig,
    FusionConfig,
    MambaConfig,
    ModelInputError,
    SynthSleepNetConfig,
    preset,
)
from sleepedge.models.mamba2 import Mamba2, TemporalContext
from sleepedge.models.neuronet import NeuroNet, NeuroNetEncoder
from sleepedge.models.spectral import SpectralConfig, SpectralSleepNet, SpectralSleepNetConfig
from sleepedge.models.synthsleepnet import SynthSleepNet, modality_dropout

__all__ = [
    "CheckpointError", "ConfigError", "EncoderConfig", "FusionConfig", "MambaConfig", "Mamba2",
    "ModelInputError", "NeuroNet", "NeuroNetEncoder", "SpectralConfig", "SpectralSleepNet",
    "SpectralSleepNetConfig", "SynthSleepNet", "SynthSleepNetConfig",
    "TemporalContext", "load_checkpoint", "modality_dropout", "preset", "save_checkpoint",
]
