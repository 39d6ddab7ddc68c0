"""The ONNX Runtime backend: converts Stable-Diffusion-family pipelines to ONNX and runs them without torch."""
