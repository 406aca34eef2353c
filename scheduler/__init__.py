"""The scheduler and the ``mono-quant`` CLI (installed as ``mono_quant.scheduler``)."""
