"""Thin Kopf handlers, one module per kind; importing this package registers them (and the settings)."""

from .. import settings  # noqa: F401  (registers the startup hook)
from . import batchprediction, driftmonitor, mlproject, modeldeployment, trainingjob  # noqa: F401
