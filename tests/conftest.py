"""Shared pytest configuration: GPU tests are skipped where CUDA is absent."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def one_thread() -> object:
    """Run the test on one torch thread (tiny models are fastest so; extra threads only contend)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def voice_kit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One tiny random-weight v2 40 kHz pitch model and a pretrained folder with a tiny HuBERT.

    Shared by every module that only needs *a* voice to convert with (covers, streaming, ...).
    """
    from tests.fakes import hubert_config, tiny_synth_config, write_hubert_checkpoint, write_voice_model

    root = tmp_path_factory.mktemp("voice-kit")
    pretrained = root / "pretrained"
    write_hubert_checkpoint(pretrained / "hubert_base.pt", hubert_config("v2"))
    model = write_voice_model(root / "voice.pth", tiny_synth_config("v2", 40000, use_f0=True))
    return {"root": root, "pretrained": pretrained, "model": model}
