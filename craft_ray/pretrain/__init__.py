"""Pretraining of the shipped phantom models: the CLIP-style reward VLM per modality and the
diffusion base of all four modalities, each with its held-out gate and model card."""
