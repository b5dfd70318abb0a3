"""Forms filled by name: an ordered ``{field: component}`` table per handler, and page values -> typed params.

A :class:`Form` gives Gradio its ``inputs`` as an ordered list (so the API's argument order is
stable and documented by the field names) and hands the handler one mapping of field name ->
value. The page's values become the library's typed records here: a conversion form becomes
:class:`infer.params.ConvertParams` through :func:`infer.params.convert_params_from_form`; the
Train form becomes :class:`train.settings.TrainSettings`. Both are torch-free; nothing here
imports Gradio.
"""

from __future__ import annotations

import contextlib
import inspect
import secrets
import shutil
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, fields, replace
from pathlib import Path
from typing import Any

from infer.errors import AudioDecodeError, TimbreError
from infer.options import (
    F0_METHODS,
    OUTPUT_SAMPLE_RATES_HZ,
    REFINE_STARTS,
    RUN_ALL,
    SAMPLER_OFF,
    SAMPLERS,
    TRAIN_STAGES,
    names,
)
from infer.params import ConvertParams, convert_params_from_form
from infer.refine_params import RefineParams
from train.dataset import DatasetLimits
from train.settings import TrainSettings
from ui.views import safe_stem

AUTO = "auto"
"""The page's F0 choice for "let the library pick" (None in the params)."""
MODEL_RATE = "model"
"""The page's output-rate choice for "the model's own rate" (0 in the params)."""
CONVERT_PAGE_FIELDS = frozenset({"model", "index", "audio", "batch", "device", "precision"})
"""Fields of the Convert form that pick the voice, the inputs and the resources, not a knob."""
TRAIN_PAGE_FIELDS = frozenset({"experiment", "uploads", "folder"})
SLICE_PAGE_FIELDS = {
    "slice_mode": "mode",
    "use_normalization": "use_normalization",
    "threshold_db": "threshold_db",
    "segment_s": "segment_s",
    "use_highpass": "use_highpass",
    "min_length_ms": "min_length_ms",
    "min_interval_ms": "min_interval_ms",
    "hop_size_ms": "hop_size_ms",
    "max_sil_kept_ms": "max_sil_kept_ms",
    "overlap_s": "overlap_s",
}
"""Train-form names -> :class:`train.slicing.SliceConfig` fields."""
DEFAULT_SEED = 0
"""The page's seed: fixed, so converting the same file twice gives the same audio (-1: fresh noise)."""
_NUMBER_TYPES = {"pitch_shift_semitones": float, "index_rate": float, "filter_radius": int}
_NUMBER_TYPES |= {"rms_mix_rate": float, "protect": float, "speaker_id": int, "steps": int}
_NUMBER_TYPES |= {"guidance_weight": float, "refine_strength": float}
STAGES_NEEDING_DATA = ("prepare", RUN_ALL)
DATASET_LIMITS = DatasetLimits()
"""Uploaded zips unpack under the limits prepare applies (so nothing is unpacked only to be refused)."""


class StudioError(TimbreError):
    """A request from the page cannot be carried out as given (the message says why)."""


class Form:
    """An ordered ``{field name: component}`` table: one handler's inputs, read by name.

    ``inputs`` is the list Gradio gets (its order is the API's argument order); :meth:`handler`
    wraps ``fn(values, *extra)`` so that it receives ``values: Mapping[str, Any]``. Gradio-injected
    parameters of ``fn`` after ``values`` (``request: gr.Request``, ``progress=gr.Progress()``)
    keep working: the wrapper's signature lists the field names, then those parameters.
    """

    def __init__(self, components: Mapping[str, Any]) -> None:
        if not components:
            raise ValueError("a form needs at least one field")
        self.components = dict(components)

    @property
    def names(self) -> tuple[str, ...]:
        """The field names, in input order."""
        return tuple(self.components)

    @property
    def inputs(self) -> list[Any]:
        """The components, in input order (what Gradio's ``inputs=`` takes)."""
        return list(self.components.values())

    def __getitem__(self, name: str) -> Any:
        return self.components[name]

    def subset(self, *field_names: str) -> Form:
        """A form of some of these fields, in the order given."""
        return Form({name: self.components[name] for name in field_names})

    def values(self, args: Sequence[Any]) -> dict[str, Any]:
        """Positional widget values -> ``{field name: value}``."""
        if len(args) != len(self.components):
            raise TypeError(f"the form has {len(self.components)} fields, got {len(args)} values")
        return dict(zip(self.components, args, strict=True))

    def handler(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn(values, *extra)`` as a Gradio handler of this form's inputs (see the class doc)."""
        signature = inspect.signature(fn)
        extra = list(signature.parameters.values())[1:]
        hints = typing.get_type_hints(inspect.unwrap(fn))
        count = len(self.components)

        def bound(*args: Any) -> Any:
            return fn(self.values(args[:count]), *args[count:])

        fields_ = [
            inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in self.components
        ]
        extra = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in extra]
        bound.__signature__ = inspect.Signature([*fields_, *extra])  # type: ignore[attr-defined]
        bound.__annotations__ = {p.name: p.annotation for p in extra if p.annotation is not p.empty}
        bound.__name__ = getattr(fn, "__name__", "handler")
        bound.__doc__ = getattr(fn, "__doc__", None)
        return bound


# --------------------------------------------------------------------------------------------
# Conversion


def f0_choices() -> list[str]:
    """The page's F0 choices: ``auto`` and every method of the table."""
    return [AUTO, *names(F0_METHODS)]


def output_rate_choices() -> list[str]:
    """The page's output rates (strings; ``model`` keeps the model's rate)."""
    return [MODEL_RATE if rate == 0 else str(rate) for rate in OUTPUT_SAMPLE_RATES_HZ]


def convert_defaults() -> dict[str, Any]:
    """The Convert form's starting values, from :class:`ConvertParams` and :class:`RefineParams`.

    The sampler starts ``off`` (RVC's path) and the refine start at the table's first entry.
    """
    params, refine = ConvertParams(), RefineParams()
    rate = params.output_sample_rate
    return {
        "pitch_shift_semitones": params.pitch_shift_semitones,
        "f0_method": params.f0_method or AUTO,
        "index_rate": params.index_rate,
        "filter_radius": params.filter_radius,
        "rms_mix_rate": params.rms_mix_rate,
        "protect": params.protect,
        "output_sample_rate": MODEL_RATE if rate == 0 else str(rate),
        "speaker_id": params.speaker_id,
        "sampler": params.sampler,
        "steps": refine.steps,
        "guidance_weight": refine.guidance_weight,
        "refine_start": names(REFINE_STARTS)[0],
        "refine_strength": refine.strength,
        "seed": DEFAULT_SEED,
    }


def convert_params_from_page(values: Mapping[str, Any]) -> ConvertParams:
    """The Convert form's knobs (by name; page-only fields ignored) -> :class:`ConvertParams`."""
    flat = {k: v for k, v in values.items() if k not in CONVERT_PAGE_FIELDS}
    f0_method = flat.get("f0_method", AUTO)
    if f0_method != AUTO and f0_method not in F0_METHODS:
        raise StudioError(f"unknown F0 method {f0_method!r}; choose one of {', '.join(f0_choices())}")
    flat["f0_method"] = None if f0_method == AUTO else f0_method
    if "output_sample_rate" in flat:
        rate = flat["output_sample_rate"]
        if str(rate) not in output_rate_choices():
            raise StudioError(f"unknown output sample rate {rate!r}")
        flat["output_sample_rate"] = 0 if rate == MODEL_RATE else int(rate)
    for key, cast in _NUMBER_TYPES.items():
        if key in flat:
            flat[key] = cast(flat[key] or 0)
    if "seed" in flat:
        flat["seed"] = page_seed(flat["seed"])
    sampler = str(flat.get("sampler") or SAMPLER_OFF).lower()
    if sampler not in SAMPLERS:
        raise StudioError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    flat["sampler"] = sampler
    try:
        return convert_params_from_form(flat)
    except ValueError as exc:
        raise StudioError(f"invalid conversion settings: {exc}") from exc


def page_seed(value: Any) -> int | None:
    """The Seed box -> ConvertParams.seed: a number >= 0 fixes the noise; -1 or empty draws fresh noise."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        seed = int(float(value))
    except (TypeError, ValueError):
        raise StudioError(f"the seed must be a whole number (-1 for fresh noise), not {value!r}") from None
    return None if seed < 0 else seed


def check_audio_inputs(paths: Sequence[str | Path | None]) -> list[Path]:
    """The uploaded files, or AudioDecodeError for none, a missing or a 0-byte one."""
    files = [Path(p) for p in paths if p]
    if not files:
        raise AudioDecodeError("no audio given: upload a file (or several) or record one, then press Convert")
    for path in files:
        if not path.is_file():
            raise AudioDecodeError(f"{path.name}: the upload did not arrive; upload the file again")
        if path.stat().st_size == 0:
            raise AudioDecodeError(f"{path.name} is empty (0 bytes); upload a real audio file")
    return files


# --------------------------------------------------------------------------------------------
# Training


def train_defaults() -> dict[str, Any]:
    """The Train form's starting values: :class:`TrainSettings` defaults (and its slicing's)."""
    values = {f.name: f.default for f in fields(TrainSettings) if f.default is not MISSING}
    slicing = TrainSettings.__dataclass_fields__["slice"].default_factory()  # type: ignore[misc]
    values.update({page: getattr(slicing, key) for page, key in SLICE_PAGE_FIELDS.items()})
    values["f0_method"] = values["f0_method"] or AUTO
    return values


def train_settings_from_page(
    values: Mapping[str, Any], *, work_dir: Path, models_dir: Path, pretrained_dir: Path
) -> TrainSettings:
    """The Train form (by name; uploads and folder aside) -> a validated :class:`TrainSettings`.

    Without a dataset: it is staged after the settings are known to be valid (see
    :func:`with_dataset`). A tiny model never uses the pretrained base.
    """
    flat = {k: v for k, v in values.items() if k not in TRAIN_PAGE_FIELDS and k not in SLICE_PAGE_FIELDS}
    known = {f.name for f in fields(TrainSettings)}
    unknown = sorted(set(flat) - known)
    if unknown:
        raise StudioError(f"unknown training field(s) {unknown}")
    for f in fields(TrainSettings):
        if f.name in flat and isinstance(f.default, bool):
            flat[f.name] = bool(flat[f.name])
        elif f.name in flat and isinstance(f.default, int):
            flat[f.name] = int(flat[f.name] or 0)
    if flat.get("f0_method") == AUTO:
        flat["f0_method"] = None
    slicing = {key: values[page] for page, key in SLICE_PAGE_FIELDS.items() if page in values}
    slice_defaults = TrainSettings.__dataclass_fields__["slice"].default_factory()  # type: ignore[misc]
    for key, value in slicing.items():
        default = getattr(slice_defaults, key)
        if isinstance(default, bool):
            slicing[key] = bool(value)
        elif isinstance(default, (int, float)):
            slicing[key] = type(default)(value or 0)
    flat["slice"] = slicing
    flat["use_pretrained"] = bool(flat.get("use_pretrained", True)) and flat.get("size") != "tiny"
    try:
        return TrainSettings.from_dict(
            {
                **flat,
                "name": str(values.get("experiment") or "").strip(),
                "work_dir": str(Path(work_dir).absolute()),
                "models_dir": str(Path(models_dir).absolute()),
                "pretrained_dir": str(Path(pretrained_dir).absolute()),
            }
        )
    except ValueError as exc:  # SliceConfig's range checks
        raise StudioError(f"invalid training settings: {exc}") from exc


def with_dataset(settings: TrainSettings, dataset: Sequence[Path]) -> TrainSettings:
    """``settings`` with its dataset (absolute paths)."""
    return replace(settings, dataset=tuple(str(Path(p).absolute()) for p in dataset))


def train_job_params(stage: str, settings: TrainSettings) -> dict[str, Any]:
    """A job's params: the settings as plain JSON plus ``stage`` (see ``train.pipeline.run_stage``)."""
    if stage not in (*TRAIN_STAGES, RUN_ALL):
        raise StudioError(f"unknown training stage {stage!r}")
    return {"stage": stage, **settings.to_dict()}


def stage_dataset_uploads(uploads: Sequence[str | Path], dest_root: Path) -> list[Path]:
    """Copy uploaded clips (and safely unpack uploaded zips) into a new folder under ``dest_root``.

    Returns the copied files and unpacked folders. A 0-byte file, a zip without audio or an unsafe
    zip (``../`` names, links, sizes over the limits) is an error and leaves nothing behind.
    """
    from infer.fsutil import check_free_space
    from infer.options import AUDIO_SUFFIXES
    from infer.ziputil import safe_extract_zip

    files = [Path(u) for u in uploads if u]
    for path in files:
        if not path.is_file() or path.stat().st_size == 0:
            raise StudioError(f"{path.name} is empty (0 bytes) or did not arrive; upload it again")
    if not files:
        return []
    dest = dest_root / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    created = [p for p in (dest_root, *dest_root.parents) if not p.exists()]
    dest.mkdir(parents=True)
    staged: list[Path] = []
    try:
        for number, path in enumerate(files):
            if path.suffix.lower() == ".zip":
                result = safe_extract_zip(
                    path,
                    dest / f"{number:03d}_{safe_stem(path.name)}",
                    max_total_bytes=DATASET_LIMITS.max_total_bytes,
                    max_files=DATASET_LIMITS.max_files,
                    max_member_bytes=DATASET_LIMITS.max_file_bytes,
                    allowed_suffixes=AUDIO_SUFFIXES,
                )
                if not result.extracted:
                    raise StudioError(f"{path.name} holds no audio files; zip the clips themselves")
                staged.append(result.dest_dir)
            else:
                target = dest / f"{number:03d}_{safe_stem(path.name)}{path.suffix.lower()}"
                check_free_space(
                    dest, path.stat().st_size, f"{path.name} needs", shown="the experiment's uploads"
                )
                shutil.copyfile(path, target)
                staged.append(target)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        for folder in created:  # the folders made for this upload, deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return staged
