"""SAILS: safety data, judging, safety-subspace selection and LoRA initialisation inside it."""
