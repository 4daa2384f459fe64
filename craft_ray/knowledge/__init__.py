"""Clinical knowledge: label spaces, prompt templates and clinical checklists."""

from craft_ray.knowledge.labels import DATASETS, MODALITIES, DatasetSpec, dataset_for_modality, get_dataset

__all__ = ["DATASETS", "MODALITIES", "DatasetSpec", "dataset_for_modality", "get_dataset"]
