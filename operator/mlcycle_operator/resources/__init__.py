"""Pure builders: (spec, meta) -> desired manifest dicts. Nothing here talks to the API server."""
