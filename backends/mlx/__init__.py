"""The MLX backend (Apple Silicon): reports why it cannot run here; no MLX model port ships yet."""
