"""The one training settings record: what the Train page, ``python -m train`` and the job worker fill in.

Torch-free, so the studio builds its Train tab (defaults included) from it without loading any
model code. :func:`train.pipeline.vits_config` derives the VITS trainer's settings from it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from infer.errors import TimbreError
from infer.fsutil import atomic_write_text
from infer.options import (
    DEFAULT_CONTENT_ENCODER,
    EDM_PARAMETERISATION,
    F0_METHODS,
    MODEL_SAMPLE_RATES_HZ,
    MODEL_SIZES,
    MODEL_VERSIONS,
    OFFLINE_CONTENT_ENCODER,
    PARAMETERISATIONS,
    TRAIN_SAMPLE_RATES_HZ,
)
from train.slicing import SliceConfig

MAX_WORKERS = 16
_AT_LEAST_ONE = (
    "epochs", "batch_size", "save_every_epochs", "diffusion_epochs", "distill_epochs",
    "cm_epochs", "acdd_epochs", "live_student_steps",
)  # fmt: skip
_STEP_LIMITS = ("max_steps", "diffusion_max_steps", "distill_max_steps", "cm_max_steps", "acdd_max_steps")


class StageError(TimbreError):
    """A stage cannot run: an earlier stage's output is missing, or the settings conflict."""


@dataclass(frozen=True)
class TrainSettings:
    """Everything a training run needs; stored as ``settings.json`` in the experiment folder.

    Attributes:
        name: the model's name (also the folder under ``models_dir``).
        work_dir: the experiment folder.
        models_dir: where the finished model is installed.
        pretrained_dir: RVC base files and content/pitch weights; None = the default folder.
        dataset: audio files, folders or zips.
        sample_rate: one of :data:`TRAIN_SAMPLE_RATES_HZ` (16000 only for ``size='tiny'``).
        version: a name of :data:`infer.options.MODEL_VERSIONS` (``'v1'`` 256-d, ``'v2'`` 768-d).
        use_f0: train a pitch model.
        f0_method: a name of :data:`infer.options.F0_METHODS` for feature extraction; None =
            rmvpe when present, else fcpe.
        content_encoder: a name of :data:`infer.options.CONTENT_ENCODERS`, or a checkpoint path.
        slice: slicing and normalisation settings.
        epochs, batch_size, save_every_epochs, max_steps: VITS schedule (max_steps 0 = no limit).
        use_pretrained: fine-tune from RVC's base G/D when present.
        size: a name of :data:`infer.options.MODEL_SIZES` (``'full'``: RVC's networks,
            ``'tiny'``: tests, quick trials).
        use_diffusion: train the teacher diffusion head; use_distillation: then distil an LCM head.
        diffusion_epochs, distill_epochs: their schedules; diffusion_max_steps, distill_max_steps: caps.
        diffusion_parameterisation: the teacher's ``'eps'`` (DDPM; students: LCM) or ``'edm'``
            (Karras et al.; students: CM and ACDD).
        use_cm, use_acdd: distil the EDM teacher into a consistency model / an ACDD student.
        cm_epochs, cm_max_steps, acdd_epochs, acdd_max_steps: their schedules and caps.
        use_live_student: distil the voice into its causal live student (``live_student.pt``).
        live_student_steps: the student's training steps (its budget).
        live_student_pool: a folder of extra source speech (any speakers) for the student's
            parallel data; empty = only the voice's own clips, pitch- and formant-shifted.
        device: ``'auto'``, ``'cpu'``, ``'cuda'``...
        workers: processes for slicing and F0 (1 to :data:`MAX_WORKERS`).
        use_report: hold out a few clips and make the report card before export.
    """

    name: str
    work_dir: Path
    models_dir: Path
    pretrained_dir: Path | None = None
    dataset: tuple[str, ...] = ()
    sample_rate: int = 40000
    version: str = "v2"
    use_f0: bool = True
    f0_method: str | None = None
    content_encoder: str = DEFAULT_CONTENT_ENCODER
    slice: SliceConfig = field(default_factory=SliceConfig)
    epochs: int = 20
    batch_size: int = 4
    save_every_epochs: int = 5
    max_steps: int = 0
    use_pretrained: bool = True
    size: str = "full"
    use_diffusion: bool = False
    use_distillation: bool = False
    diffusion_epochs: int = 20
    diffusion_max_steps: int = 0
    distill_epochs: int = 10
    distill_max_steps: int = 0
    diffusion_parameterisation: str = "eps"
    use_cm: bool = False
    use_acdd: bool = False
    cm_epochs: int = 10
    cm_max_steps: int = 0
    acdd_epochs: int = 10
    acdd_max_steps: int = 0
    use_live_student: bool = False
    live_student_steps: int = 3000
    live_student_pool: str = ""
    device: str = "auto"
    workers: int = 2
    use_report: bool = True

    def __post_init__(self) -> None:
        from infer.catalog import validate_model_name

        validate_model_name(self.name)
        for problem in _problems(self):
            raise StageError(problem)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainSettings:
        """Build from plain data (JSON, job params); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise StageError(f"unknown training setting(s): {sorted(unknown)}")
        data = dict(values)
        for key in ("work_dir", "models_dir"):
            data[key] = Path(data[key])
        if data.get("pretrained_dir"):
            data["pretrained_dir"] = Path(data["pretrained_dir"])
        if isinstance(data.get("dataset"), (str, Path)):
            data["dataset"] = (str(data["dataset"]),)
        data["dataset"] = tuple(str(p) for p in data.get("dataset", ()))
        if isinstance(data.get("slice"), Mapping):
            data["slice"] = SliceConfig.from_dict(data["slice"])
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly data."""
        data = asdict(self)
        data["work_dir"] = str(self.work_dir)
        data["models_dir"] = str(self.models_dir)
        data["pretrained_dir"] = str(self.pretrained_dir) if self.pretrained_dir else None
        data["dataset"] = list(self.dataset)
        data["slice"] = self.slice.to_dict()
        return data

    def save(self) -> None:
        """Write ``settings.json`` into the experiment folder."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.work_dir / "settings.json", json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, work_dir: Path) -> TrainSettings:
        """Read ``settings.json`` from an experiment folder."""
        path = Path(work_dir) / "settings.json"
        if not path.is_file():
            raise StageError(
                f"{work_dir} is not an experiment folder (no settings.json); run `prepare` first"
            )
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


def _problems(settings: TrainSettings) -> Iterator[str]:
    """What is wrong with ``settings``, one message per problem (the first one is raised)."""
    if settings.version not in MODEL_VERSIONS:
        yield f"version must be one of {', '.join(MODEL_VERSIONS)}, not {settings.version!r}"
    if settings.size not in MODEL_SIZES:
        yield f"model size must be one of {', '.join(MODEL_SIZES)}, not {settings.size!r}"
    rates = TRAIN_SAMPLE_RATES_HZ if settings.size == "tiny" else MODEL_SAMPLE_RATES_HZ
    if settings.sample_rate not in rates:
        yield f"a {settings.size} model's sample rate must be one of {', '.join(map(str, rates))}"
    if settings.f0_method is not None and settings.f0_method not in F0_METHODS:
        yield f"F0 method must be one of {', '.join(F0_METHODS)}, not {settings.f0_method!r}"
    if settings.use_distillation and not settings.use_diffusion:
        yield "distillation needs the diffusion head (the teacher): enable diffusion too"
    if settings.diffusion_parameterisation not in PARAMETERISATIONS:
        yield f"diffusion_parameterisation must be one of {', '.join(PARAMETERISATIONS)}"
    is_edm = settings.diffusion_parameterisation == EDM_PARAMETERISATION
    if settings.use_distillation and is_edm:
        yield "LCM distillation needs an eps teacher; the EDM teacher's students are cm and acdd"
    if (settings.use_cm or settings.use_acdd) and not (settings.use_diffusion and is_edm):
        yield "the cm and acdd students need the EDM teacher: enable diffusion with edm"
    for key in _AT_LEAST_ONE:
        if getattr(settings, key) < 1:
            yield f"{key} must be at least 1"
    if min(getattr(settings, key) for key in _STEP_LIMITS) < 0:
        yield "step limits must be 0 (no limit) or more"
    if settings.live_student_pool and not Path(settings.live_student_pool).is_dir():
        yield f"the live student's source folder {settings.live_student_pool} is not a folder"
    if not 1 <= settings.workers <= MAX_WORKERS:
        yield f"workers: processes must be 1 to {MAX_WORKERS}"
    if settings.content_encoder == OFFLINE_CONTENT_ENCODER and settings.version != "v2":
        yield f"{OFFLINE_CONTENT_ENCODER} models are stored in the v2 layout: use version 'v2'"
