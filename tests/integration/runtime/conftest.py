"""Fixtures the runtime tier's serving modules share."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.pytest_support import unavailable

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def serve_home(tmp_path_factory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A directory and a BentoML home of the module's own, here (BENTOML_HOME set) and in the servers it starts
    (the env returned); the checkout on PYTHONPATH so those servers import this tree."""
    try:
        import bentoml  # noqa: F401
    except ImportError as err:
        unavailable("bentoml", str(err))
    tmp = tmp_path_factory.mktemp("serve")
    env = {**os.environ, "BENTOML_HOME": str(tmp / "bentoml"), "BENTOML_DO_NOT_TRACK": "true",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENTOML_HOME", env["BENTOML_HOME"])
        yield tmp, env
