"""The job pipeline: load, calibrate, quantize, save, served-load check, hash."""
