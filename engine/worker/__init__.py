"""The worker role: decode a job's instances, run the model, return the outputs."""
