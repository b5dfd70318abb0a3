"""The pretrained-file registry: names, URLs, sizes and checksums; where the files live; their state.

Local layout under the pretrained folder (:func:`default_pretrained_dir`)::

    hubert_base.pt                  content encoder (HuBERT base, fairseq checkpoint)
    rmvpe.pt                        RMVPE pitch extractor
    separation/MelBandRoformer.ckpt Mel-Band RoFormer vocal separator (its own full URL)
    pretrained_v1/f0G40k.pth ...    RVC v1 base generator/discriminator (hub folder ``pretrained/``)
    pretrained_v2/f0G40k.pth ...    RVC v2 base generator/discriminator (hub folder ``pretrained_v2/``)

An asset's ``name`` is its path relative to that folder, so the v1 and v2 files, which share
file names on the hub, never collide. Downloads stream into ``<final>.part`` next to the final
file, resume with an HTTP ``Range`` request, are checked against the registry's sha256 (or
size, when no hash is known) and only then are moved into place with ``os.replace``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType

from infer import __version__, rvc
from infer.errors import AssetError, Cancelled
from infer.options import MODEL_SAMPLE_RATES_HZ
from infer.progress import StopFn

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://huggingface.co/lj1995/VoiceConversionWebUI/resolve/main"
EXAMPLE_MIRROR_URL = "https://hf-mirror.com/lj1995/VoiceConversionWebUI/resolve/main"
MIRROR_ENV_VAR = "TIMBRE_ASSETS_MIRROR"
HF_ENDPOINT_ENV_VAR = "HF_ENDPOINT"
"""Hugging Face mirror host (e.g. ``https://hf-mirror.com``) for assets with a full ``source_url``."""
HF_HOST_URL = "https://huggingface.co"
PRETRAINED_DIR_ENV_VAR = "TIMBRE_PRETRAINED_DIR"
PART_SUFFIX = ".part"
DOWNLOAD_CHUNK_BYTES = 64 * 1024
READBACK_CHUNK_BYTES = 1024 * 1024
PROGRESS_INTERVAL_S = 0.1
PROGRESS_BAR_STEPS = 1000
BYTES_PER_MB = 1_000_000
USER_AGENT = f"Timbre/{__version__} (python-urllib)"

ASSET_KINDS = ("content", "pitch", "pretrained_g", "pretrained_d", "separation")
ASSET_STATES = ("present", "missing", "partial", "unverified", "bad_size", "bad_checksum")
"""``bad_checksum`` is only reported when a status check is asked to re-hash files."""

_SHA256_HEX_CHARS = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Asset:
    """One downloadable file.

    Attributes:
        name: path relative to the pretrained folder (unique key; ``/`` separated).
        url_path: path relative to the base URL (hub or mirror).
        size_bytes: exact size when published, else None.
        sha256: lowercase hex digest when published, else None (then only the size is checked).
        description: one line saying what the file is for.
        kind: one of ``ASSET_KINDS``.
        source_url: full download URL for a file hosted outside the base URL's repository (then
            ``url_path`` is only informative); ``$HF_ENDPOINT`` replaces its Hugging Face host.
    """

    name: str
    url_path: str
    size_bytes: int | None
    sha256: str | None
    description: str
    kind: str
    source_url: str | None = None

    def __post_init__(self) -> None:
        _check_relative_path(self.name, "name")
        _check_relative_path(self.url_path, "url_path")
        if self.kind not in ASSET_KINDS:
            raise AssetError(f"asset {self.name}: kind {self.kind!r} is not one of {', '.join(ASSET_KINDS)}")
        if self.size_bytes is not None and (isinstance(self.size_bytes, bool) or self.size_bytes <= 0):
            raise AssetError(f"asset {self.name}: size_bytes must be a positive int or None")
        if self.sha256 is not None and (len(self.sha256) != 64 or not set(self.sha256) <= _SHA256_HEX_CHARS):
            raise AssetError(f"asset {self.name}: sha256 must be 64 lowercase hex characters or None")

    @property
    def file_name(self) -> str:
        """The bare file name, e.g. ``f0G40k.pth``."""
        return PurePosixPath(self.name).name

    def url(self, base_url: str) -> str:
        """Full download URL: ``source_url`` when the asset has one, else ``url_path`` under ``base_url``."""
        if self.source_url is not None:
            endpoint = os.environ.get(HF_ENDPOINT_ENV_VAR, "").strip().rstrip("/")
            if endpoint and self.source_url.startswith(HF_HOST_URL + "/"):
                return endpoint + self.source_url[len(HF_HOST_URL) :]
            return self.source_url
        return f"{base_url.rstrip('/')}/{urllib.parse.quote(self.url_path)}"


def _check_relative_path(value: str, field: str) -> None:
    path = PurePosixPath(value)
    if (
        not value
        or "\\" in value
        or path.is_absolute()
        or any(part in ("", ".", "..") for part in path.parts)
    ):
        raise AssetError(f"asset {field} {value!r} must be a plain relative path with '/' separators")
    if path.as_posix() != value:
        raise AssetError(f"asset {field} {value!r} is not in normal form (expected {path.as_posix()!r})")


Registry = Mapping[str, Asset]


def make_registry(assets: Iterable[Asset]) -> Registry:
    """Read-only registry keyed by asset name; duplicate names are rejected."""
    table: dict[str, Asset] = {}
    for asset in assets:
        if asset.name in table:
            raise AssetError(f"asset name {asset.name!r} appears twice in the registry")
        table[asset.name] = asset
    return MappingProxyType(table)


# Published digests of the files at https://huggingface.co/lj1995/VoiceConversionWebUI, found
# with a code search of public repositories (no value here was computed or guessed by Timbre):
# * every G/D hash: a Nix fixed-output pin of that repo at revision
#   e6d0c1a17da07c33557852f9dfa2bd44cc75737d (SRI base64, converted to hex here);
# * the f0 G/D hashes and all G/D sizes listed below also appear, identical, in an independent
#   asset catalog of a Rust desktop app that mirrors these files; pretrained_v2/f0G40k.pth and
#   f0D40k.pth (hash and size) additionally in several Applio-based download scripts;
# * hubert_base.pt and rmvpe.pt (hash and size): many RVC setup scripts and model manifests.
# The sizes of the no-f0 G/D files were not found published, so they stay None (checked by hash).
_HUB_SHA256 = {
    "hubert_base.pt": "f54b40fd2802423a5643779c4861af1e9ee9c1564dc9d32f54f20b5ffba7db96",
    "rmvpe.pt": "6d62215f4306e3ca278246188607209f09af3dc77ed4232efdd069798c4ec193",
    "pretrained/D32k.pth": "2ab20645829460fdad0d3c44254f1ab53c32cae50c22a66c926ae5aa30abda6f",
    "pretrained/D40k.pth": "547f66dbbcd9023b9051ed244d12ab043ba8a4e854b154cc28761ac7c002909b",
    "pretrained/D48k.pth": "8cc013fa60ed9c3f902f5bd99f48c7e3b9352d763d4d3cd6bc241c37b0bfd9ad",
    "pretrained/f0D32k.pth": "294db3087236e2c75260d6179056791c9231245daf5d0485545d9e54c4057c77",
    "pretrained/f0D40k.pth": "7d4f5a441594b470d67579958b2fd4c6b992852ded28ff9e72eda67abcebe423",
    "pretrained/f0D48k.pth": "1b84c8bf347ad1e539c842e8f2a4c36ecd9e7fb23c16041189e4877e9b07925c",
    "pretrained/f0G32k.pth": "285f524bf48bb692c76ad7bd0bc654c12bd9e5edeb784dddf7f61a789a608574",
    "pretrained/f0G40k.pth": "9115654aeef1995f7dd3c6fc4140bebbef0ca9760bed798105a2380a34299831",
    "pretrained/f0G48k.pth": "78bc9cab27e34bcfc194f93029374d871d8b3e663ddedea32a9709e894cc8fe8",
    "pretrained/G32k.pth": "81817645cde7ed2e2d83f23ef883f33dda564924b497e84d792743912eca4c23",
    "pretrained/G40k.pth": "e428573bda1124b0ae0ae843fd8dcded6027d3993444790b3e9b0100938b2113",
    "pretrained/G48k.pth": "3862a67ea6313e8ffefc05cee6bee656ef3e089442e9ecf4a6618d60721f3e95",
    "pretrained_v2/D32k.pth": "d8043378cc6619083d385f5a045de09b83fb3bf8de45c433ca863b71723ac3ca",
    "pretrained_v2/D40k.pth": "471378e894e7191f89a94eda8288c5947b16bbe0b10c3f1f17efdb7a1d998242",
    "pretrained_v2/D48k.pth": "db01094a93c09868a278e03dafe8bb781bfcc1a5ba8df168c948bf9168c84d82",
    "pretrained_v2/f0D32k.pth": "bd7134e7793674c85474d5145d2d982e3c5d8124fc7bb6c20f710ed65808fa8a",
    "pretrained_v2/f0D40k.pth": "6b6ab091e70801b28e3f41f335f2fc5f3f35c75b39ae2628d419644ec2b0fa09",
    "pretrained_v2/f0D48k.pth": "2269b73c7a4cf34da09aea99274dabf99b2ddb8a42cbfb065fb3c0aa9a2fc748",
    "pretrained_v2/f0G32k.pth": "2332611297b8d88c7436de8f17ef5f07a2119353e962cd93cda5806d59a1133d",
    "pretrained_v2/f0G40k.pth": "3b2c44035e782c4b14ddc0bede9e2f4a724d025cd073f736d4f43708453adfcb",
    "pretrained_v2/f0G48k.pth": "b5d51f589cc3632d4eae36a315b4179397695042edc01d15312e1bddc2b764a4",
    "pretrained_v2/G32k.pth": "869b26a47f75168d6126f64ac39e6de5247017a8658cfd68aca600f7323efb9f",
    "pretrained_v2/G40k.pth": "a3843da7fde33db1dab176146c70d6c2df06eafe9457f4e3aa10024e9c6a4b69",
    "pretrained_v2/G48k.pth": "2e2b1581a436d07a76b10b9d38765f64aa02836dc65c7dee1ce4140c11ea158b",
}
_HUB_SIZE_BYTES = {
    "hubert_base.pt": 189_507_909,
    "rmvpe.pt": 181_184_272,
    "pretrained/f0G32k.pth": 72_795_627,
    "pretrained/f0G40k.pth": 72_909_665,
    "pretrained/f0G48k.pth": 73_008_619,
    "pretrained/f0D32k.pth": 109_978_943,
    "pretrained/f0D40k.pth": 109_978_943,
    "pretrained/f0D48k.pth": 109_978_943,
    "pretrained_v2/f0G32k.pth": 73_950_049,
    "pretrained_v2/f0G40k.pth": 73_106_273,
    "pretrained_v2/f0G48k.pth": 75_465_569,
    "pretrained_v2/f0D32k.pth": 142_875_703,
    "pretrained_v2/f0D40k.pth": 142_875_703,
    "pretrained_v2/f0D48k.pth": 142_875_703,
}


def _hub_asset(name: str, url_path: str, description: str, kind: str) -> Asset:
    return Asset(
        name=name,
        url_path=url_path,
        size_bytes=_HUB_SIZE_BYTES.get(url_path),
        sha256=_HUB_SHA256.get(url_path),
        description=description,
        kind=kind,
    )


def _pretrained_file_name(role: str, sample_rate: int, use_f0: bool) -> str:
    return f"{'f0' if use_f0 else ''}{role}{sample_rate // 1000}k.pth"


def _default_assets() -> list[Asset]:
    assets = [
        _hub_asset("hubert_base.pt", "hubert_base.pt", "HuBERT base content encoder (fairseq)", "content"),
        _hub_asset("rmvpe.pt", "rmvpe.pt", "RMVPE pitch extractor", "pitch"),
    ]
    for preset in rvc.versions():
        layout = rvc.layout(preset)
        for use_f0 in (True, False):
            for sample_rate in MODEL_SAMPLE_RATES_HZ:
                for role, kind, what in (
                    ("G", "pretrained_g", "generator"),
                    ("D", "pretrained_d", "discriminator"),
                ):
                    file_name = _pretrained_file_name(role, sample_rate, use_f0)
                    pitch = "with pitch (f0)" if use_f0 else "without pitch"
                    description = (
                        f"RVC {preset} base {what}, {sample_rate // 1000} kHz, {pitch}, "
                        f"{layout.content_dim}-dim content"
                    )
                    assets.append(
                        _hub_asset(
                            f"{layout.local_pretrained_folder}/{file_name}",
                            f"{layout.hub_pretrained_folder}/{file_name}",
                            description,
                            kind,
                        )
                    )
    return assets


# Kim's Mel-Band RoFormer vocal model ("Kim Vocal 2"), pinned to Hugging Face revision
# ac9b0614ab3cd7f77219e18ba494dfd93956c348 of KimberleyJSN/melbandroformer. Size and sha256 are the
# published values (the LFS object record of that revision, quoted identically by several
# independent download manifests); nothing here was computed by Timbre.
MELBAND_ROFORMER_REVISION = "ac9b0614ab3cd7f77219e18ba494dfd93956c348"
_MELBAND_ROFORMER = Asset(
    name="separation/MelBandRoformer.ckpt",
    url_path=f"KimberleyJSN/melbandroformer/resolve/{MELBAND_ROFORMER_REVISION}/MelBandRoformer.ckpt",
    size_bytes=913_106_900,
    sha256="87201f4d31afb5bc79993230fc49446918425574db48c01c405e44f365c7559e",
    description="Mel-Band RoFormer vocal separator (Kimberley Jensen)",
    kind="separation",
    source_url=(
        f"{HF_HOST_URL}/KimberleyJSN/melbandroformer/resolve/{MELBAND_ROFORMER_REVISION}/MelBandRoformer.ckpt"
    ),
)

DEFAULT_REGISTRY: Registry = make_registry([*_default_assets(), _MELBAND_ROFORMER])


def pretrained_pair(preset: str, sample_rate: int, *, use_f0: bool) -> tuple[str, str]:
    """Registry names of the base (generator, discriminator) for a preset ("v1"/"v2") and rate."""
    if preset not in rvc.LAYOUTS:
        raise AssetError(f"no pretrained files for preset {preset!r}; choose one of {rvc.versions()}")
    if sample_rate not in MODEL_SAMPLE_RATES_HZ:
        raise AssetError(
            f"no pretrained files for sample rate {sample_rate} Hz; choose one of {MODEL_SAMPLE_RATES_HZ}"
        )
    folder = rvc.layout(preset).local_pretrained_folder
    return (
        f"{folder}/{_pretrained_file_name('G', sample_rate, use_f0)}",
        f"{folder}/{_pretrained_file_name('D', sample_rate, use_f0)}",
    )


def find_asset(name: str, registry: Registry = DEFAULT_REGISTRY) -> Asset:
    """Look an asset up by its name, or by its bare file name when that is unambiguous."""
    key = name.strip().replace("\\", "/")
    if key in registry:
        return registry[key]
    matches = [asset for asset in registry.values() if asset.file_name == key]
    if len(matches) == 1:
        return matches[0]
    if matches:
        choices = ", ".join(asset.name for asset in matches)
        raise AssetError(f"asset name {name!r} is ambiguous; use one of: {choices}")
    raise AssetError(f"unknown asset {name!r}; `python -m infer assets status` lists the known names")


def default_pretrained_dir() -> Path:
    """``$TIMBRE_PRETRAINED_DIR``, else a checkout's ``pretrained/``, else ``<home>/pretrained``."""
    from infer.home import SOURCE_ROOT, home_dir, is_checkout

    override = os.environ.get(PRETRAINED_DIR_ENV_VAR, "").strip()
    if override:
        return Path(override).expanduser()
    return (SOURCE_ROOT if is_checkout() else home_dir()) / "pretrained"


def pretrained_root(pretrained_dir: str | os.PathLike[str] | None) -> Path:
    return default_pretrained_dir() if pretrained_dir is None else Path(pretrained_dir)


def local_path(asset: Asset, root: Path) -> Path:
    return root.joinpath(*PurePosixPath(asset.name).parts)


def part_path(final: Path) -> Path:
    return final.with_name(final.name + PART_SUFFIX)


def pretrained_path(
    name: str, pretrained_dir: str | os.PathLike[str] | None = None, registry: Registry = DEFAULT_REGISTRY
) -> Path:
    """Where an asset lives locally (whether or not it is there yet)."""
    return local_path(find_asset(name, registry), pretrained_root(pretrained_dir))


def resolve_base_url(base_url: str | None = None) -> str:
    """The base URL to download from: ``base_url``, else ``$TIMBRE_ASSETS_MIRROR``, else the hub."""
    candidate = (base_url or "").strip() or os.environ.get(MIRROR_ENV_VAR, "").strip() or DEFAULT_BASE_URL
    parts = urllib.parse.urlsplit(candidate)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise AssetError(
            f"download base URL {candidate!r} is not an http(s) URL; set {MIRROR_ENV_VAR} to something like "
            f"{EXAMPLE_MIRROR_URL}"
        )
    return candidate.rstrip("/")


def sha256_of_file(path: str | os.PathLike[str], should_stop: StopFn | None = None) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(READBACK_CHUNK_BYTES):
            if should_stop is not None and should_stop():
                raise Cancelled(f"checksum of {path} stopped on request")
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class AssetStatus:
    """Where one asset stands on disk.

    ``size_bytes`` is the size of the final file, or of the ``.part`` file when ``state`` is
    ``partial``, or None when missing. ``state`` is one of ``ASSET_STATES``.
    """

    name: str
    path: Path
    state: str
    size_bytes: int | None
    expected_size_bytes: int | None

    @property
    def is_usable(self) -> bool:
        """True when the final file is there with the right size (hash-checked or not)."""
        return self.state in ("present", "unverified")


def file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None


def status_of(asset: Asset, root: Path, *, verify_checksum: bool = False) -> AssetStatus:
    final = local_path(asset, root)
    size = file_size(final)

    def status(state: str, size_bytes: int | None) -> AssetStatus:
        return AssetStatus(asset.name, final, state, size_bytes, asset.size_bytes)

    if size is None:
        part_size = file_size(part_path(final))
        return status("missing", None) if part_size is None else status("partial", part_size)
    if asset.size_bytes is not None and size != asset.size_bytes:
        return status("bad_size", size)
    if asset.sha256 is None:
        return status("unverified", size)
    if verify_checksum and sha256_of_file(final) != asset.sha256:
        return status("bad_checksum", size)
    return status("present", size)


def asset_status(
    pretrained_dir: str | os.PathLike[str] | None = None,
    registry: Registry = DEFAULT_REGISTRY,
    *,
    verify_checksum: bool = False,
) -> list[AssetStatus]:
    """State of every registry asset under ``pretrained_dir``, in registry order.

    Files are judged by size; ``verify_checksum=True`` also re-hashes present files (slow: the
    whole set is a few GB) and reports ``bad_checksum`` for a mismatch.
    """
    root = pretrained_root(pretrained_dir)
    return [status_of(asset, root, verify_checksum=verify_checksum) for asset in registry.values()]


def download_command(name: str) -> str:
    """The shell command that downloads one asset."""
    return f"python -m infer assets download {name}"


def resolve_asset(
    name: str, pretrained_dir: str | os.PathLike[str] | None = None, registry: Registry = DEFAULT_REGISTRY
) -> Path:
    """Path of a usable local copy of an asset, or AssetError saying how to get one."""
    asset = find_asset(name, registry)
    current = status_of(asset, pretrained_root(pretrained_dir))
    if current.is_usable:
        return current.path
    command = download_command(asset.name)
    if current.state == "bad_size":
        raise AssetError(
            f"{asset.description} at {current.path} has {current.size_bytes} bytes but "
            f"{asset.size_bytes} were expected (a truncated or different file); delete it and run `{command}`"
        )
    partial = ""
    if current.state == "partial":
        kept = format_megabytes(current.size_bytes or 0)
        partial = f" (a partial download of {kept} is kept and will resume)"
    raise AssetError(
        f"{asset.description} ({asset.name}) is missing: expected at {current.path}{partial}. "
        f"Download it with `{command}` (set {MIRROR_ENV_VAR} to use a mirror), or copy the file there by hand"
    )


def format_megabytes(n_bytes: int) -> str:
    return f"{n_bytes / BYTES_PER_MB:.1f} MB"
