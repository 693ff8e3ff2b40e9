"""Finding, configuring and loading models: hub ids, local HF folders, GGUF files, the default model."""
