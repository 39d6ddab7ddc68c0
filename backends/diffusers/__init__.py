"""The diffusers backend: local Hugging Face diffusers pipelines (run backend.py as a script)."""
