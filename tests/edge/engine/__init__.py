"""In-process tests of the engine: a real Engine, MemoryStore, scripted origin, frozen clock."""
