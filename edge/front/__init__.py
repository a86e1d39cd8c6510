"""The client-facing side: our own request and response types, and the fronts that
carry them (aiohttp's server is one adapter; the engine never sees a front's types)."""
