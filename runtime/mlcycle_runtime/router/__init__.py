"""The traffic router: weighted, sticky and shadow routing in front of the per-version model servers."""
