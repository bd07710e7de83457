"""The mlcycle.io/v1alpha1 API: pydantic models of each kind, the one source of the CRDs."""
