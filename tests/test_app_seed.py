"""Two /convert calls (gradio_client) with the same seed give the same audio; warnings reach the caller."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from gradio_client import Client, handle_file

from tests.helpers import VOICES_DIR
from ui import server
from ui.batch import INDEX_AUTO

pytestmark = [
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]
SOURCE_CLIP = VOICES_DIR / "us2" / "speech" / "003.flac"
CLIP_S = 1.5


@pytest.fixture(scope="module")
def app(voice_kit: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, Path]]:
    root = tmp_path_factory.mktemp("seed-app")
    (root / "models" / "voice").mkdir(parents=True)
    shutil.copyfile(voice_kit["model"], root / "models" / "voice" / "voice.pth")
    audio, rate = sf.read(SOURCE_CLIP, dtype="float32")
    mono = audio[: int(CLIP_S * rate)]
    sf.write(root / "stereo.wav", np.stack([mono, 0.5 * mono], axis=1), rate)
    demo = server.build_app(root / "models", root / "data", voice_kit["pretrained"])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server.launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False), root
    finally:
        demo.close()


def convert(client: Client, clip: Path, **fields: object) -> tuple[np.ndarray, str]:
    audio, _files, _plot, status = client.predict(
        model="voice",
        index=INDEX_AUTO,
        audio=handle_file(str(clip)),
        batch=[],
        f0_method="pm",
        device="cpu",
        api_name="/convert",
        **fields,
    )
    return sf.read(audio, dtype="float32")[0], status


def test_same_seed_same_audio_and_fresh_noise_differs(app: tuple[Client, Path]) -> None:
    client, root = app
    first, status = convert(client, root / "stereo.wav")  # the page default: seed 0
    second, _ = convert(client, root / "stereo.wav", seed=0)
    assert first.size > 0 and np.array_equal(first, second)
    other, _ = convert(client, root / "stereo.wav", seed=7)
    fresh_a, _ = convert(client, root / "stereo.wav", seed=-1)
    fresh_b, _ = convert(client, root / "stereo.wav", seed=-1)
    assert not np.array_equal(first, other)
    assert not np.array_equal(fresh_a, fresh_b)
    assert "the 2 channels were averaged to mono" in status
