"""asv benchmarks of flash_attn_cy (and PyTorch SDPA / MLX beside it). See the "Benchmarks (asv)" section of README.md."""
