"""Typed training configuration (YAML -> dataclasses; unknown keys are errors)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import ConfigError, from_dict, load_yaml, parse_overrides, set_by_path, to_dict
from ..data import DataConfig
from ..models.bsqvit import BSQViTConfig
from ..models.presets import get_preset
from .discriminator import DiscriminatorConfig


@dataclass
class LossConfig:
    """The BSQ-ViT objective: L1 (+L2) + perceptual + GAN + entropy, as in the reference."""

    l1_weight: float = 1.0
    l2_weight: float = 0.0
    perceptual: str = "vgg"  # vgg | alex | squeeze | squeeze-caffe (offline stand-in) | none
    perceptual_weight: float = 0.1
    perceptual_weights: str | None = None  # backbone file or directory; default: torch hub cache
    lpips_calibration: str | None = None  # directory with lpips v0.1 vgg.pth/alex.pth/squeeze.pth
    gan_weight: float = 0.1  # fixed weight of the generator's adversarial loss
    gan_start: int = 0  # step at which the discriminator and G's adversarial loss start
    gan_loss: str = "nonsaturating"  # nonsaturating | hinge
    adaptive_gan_weight: bool = False  # ||grad rec|| / ||grad G|| at the last layer (VQGAN)
    r1_gamma: float = 10.0
    r1_every: int = 16  # lazy R1 interval
    quant_weight: float = 0.1  # weight of the quantizer loss (entropy terms, commitment)
    quant_rampup_multiplier: float = 3.0  # starts at quant_weight * this ...
    quant_rampup_steps: int = 2000  # ... and ramps linearly to quant_weight over these steps

    def __post_init__(self):
        if self.perceptual not in ("vgg", "alex", "squeeze", "squeeze-caffe", "none"):
            raise ConfigError(f"loss.perceptual must be vgg, alex, squeeze, squeeze-caffe or none; got {self.perceptual!r}")
        if self.gan_loss not in ("nonsaturating", "hinge"):
            raise ConfigError(f"loss.gan_loss must be nonsaturating or hinge; got {self.gan_loss!r}")

    def quant_weight_at(self, step: int) -> float:
        if self.quant_rampup_steps <= 0:
            return self.quant_weight
        r = min(step, self.quant_rampup_steps) / self.quant_rampup_steps
        return self.quant_weight * (r + self.quant_rampup_multiplier * (1 - r))


@dataclass
class OptimConfig:
    """AdamW for G and D; linear warm-up then half-cosine (the reference's schedule).

    ``lr`` is the absolute peak learning rate of the generator for the *global* batch
    (batch_size x world_size x grad_accum). The reference's 1e-4 is 4e-7 x 256.
    """

    lr: float = 1e-4
    disc_lr: float | None = None  # default: lr
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 1e-4
    eps: float = 1e-8
    warmup_steps: int = 5000
    warmup_start: float = 0.1  # lr multiplier at step 0
    min_lr_ratio: float = 0.5  # lr multiplier at the end of the cosine
    decay_steps: int | None = None  # cosine length; default: train.steps
    grad_clip: float = 1.0  # 0 disables
    grad_accum: int = 1
    ema_decay: float = 0.999  # 0 disables EMA
    amp: str = "bf16"  # bf16 | fp16 | none  (fp16 uses a GradScaler, CUDA only)
    # AdamW's fused CUDA kernel: None = on when every parameter is a floating CUDA tensor (same
    # update as the default foreach kernel up to rounding); false = never; true = required.
    fused: bool | None = None

    def __post_init__(self):
        if self.amp not in ("bf16", "fp16", "none"):
            raise ConfigError(f"optim.amp must be bf16, fp16 or none; got {self.amp!r}")
        if self.grad_accum < 1:
            raise ConfigError("optim.grad_accum must be >= 1")


@dataclass
class TrainConfig:
    model: BSQViTConfig = field(default_factory=BSQViTConfig)
    preset: str | None = None  # start from a named preset; `model` keys given here override it
    init_from: str | None = None  # a model directory to fine-tune from (e.g. image -> video)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = 1000
    seed: int = 0
    log_every: int = 10
    eval_every: int = 500  # also exports DIR/model/
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    sample_images: int = 8  # items in the PNG sample grid
    strategy: str = "ddp"  # ddp | fsdp (multi-process only)
    # torch.compile the generator and the discriminator's forward (R1 runs the eager D: compiled
    # graphs have no double backward). Checkpoints and exports hold the uncompiled modules' state
    # dicts, so a run can be resumed with compile on or off.
    compile: bool = False
    # Channels-last memory format for the 2-D discriminator and the perceptual net (faster
    # convolutions on CUDA tensor cores; off by default, the layout changes rounding on CPU).
    channels_last: bool = False
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None  # torch.set_num_threads on CPU

    def __post_init__(self):
        if self.strategy not in ("ddp", "fsdp"):
            raise ConfigError(f"strategy must be ddp or fsdp; got {self.strategy!r}")


def load_train_config(path, overrides: list[str] | None = None, cls=TrainConfig):
    """Read a YAML training config; ``preset: NAME`` fills ``model`` before its keys apply."""
    data = load_yaml(path)
    for key, value in parse_overrides(overrides or []):
        set_by_path(data, key, value)
    preset = data.get("preset")
    if preset:
        try:
            base = to_dict(get_preset(preset))
        except KeyError as e:
            raise ConfigError(str(e).strip("'\"")) from None
        model = data.get("model") or {}
        if not isinstance(model, dict):
            raise ConfigError("model: expected a mapping")
        quant = {**base.get("quantizer", {}), **(model.get("quantizer") or {})}
        data["model"] = {**base, **model, "quantizer": quant}
    return from_dict(cls, data)
