"""The local Kubernetes control plane used by the integration and end-to-end tests."""
