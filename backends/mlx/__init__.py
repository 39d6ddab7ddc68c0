"""The MLX backend: Stable Diffusion 1.x/2.x ported to MLX (Apple Silicon; mlx[cpu] on Linux for testing)."""
