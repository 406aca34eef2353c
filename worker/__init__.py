"""The worker: runs quantization jobs (installed as ``mono_quant.worker``)."""
