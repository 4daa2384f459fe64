"""Label spaces of the four datasets, and which labels the phantom generators cover.

Pure data with no project imports: the config layer validates label subsets against it.
"""

from __future__ import annotations

from dataclasses import dataclass

from craft_ray.errors import ConfigError


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # dataset name used in configs and on the CLI
    modality: str  # chest | derm | fundus | histo
    labels: tuple[str, ...]  # the full label space, in canonical order
    descriptions: dict[str, str]  # label -> clinical phrase used in prompts
    multilabel: bool  # CheXpert is multi-label; the others are one class per image
    channels: int  # 1 = greyscale (stored as PNG mode L), 3 = RGB
    phantom_labels: tuple[str, ...]  # labels the phantom generator draws
    modality_phrase: str  # "a frontal chest radiograph", used by prompts and realism checks

    def check_labels(self, labels: list[str] | tuple[str, ...], where: str = "labels") -> None:
        unknown = [label for label in labels if label not in self.labels]
        if unknown:
            prefix = f"{where}: " if where else ""
            raise ConfigError(
                f"{prefix}unknown label(s) {unknown} for dataset '{self.name}' (known: {', '.join(self.labels)})"
            )

    def label_index(self, label: str) -> int:
        self.check_labels([label])
        return self.labels.index(label)


CHEXPERT = DatasetSpec(
    name="chexpert",
    modality="chest",
    labels=(
        "No Finding",
        "Enlarged Cardiomediastinum",
        "Cardiomegaly",
        "Lung Opacity",
        "Lung Lesion",
        "Edema",
        "Consolidation",
        "Pneumonia",
        "Atelectasis",
        "Pneumothorax",
        "Pleural Effusion",
        "Pleural Other",
        "Fracture",
        "Support Devices",
    ),
    descriptions={
        "No Finding": "no acute cardiopulmonary abnormality",
        "Enlarged Cardiomediastinum": "an enlarged cardiomediastinal silhouette",
        "Cardiomegaly": "cardiomegaly",
        "Lung Opacity": "a focal lung opacity",
        "Lung Lesion": "a lung nodule",
        "Edema": "pulmonary edema",
        "Consolidation": "lobar consolidation",
        "Pneumonia": "pneumonia",
        "Atelectasis": "atelectasis",
        "Pneumothorax": "a pneumothorax",
        "Pleural Effusion": "a pleural effusion",
        "Pleural Other": "pleural thickening",
        "Fracture": "a rib fracture",
        "Support Devices": "support devices in place",
    },
    multilabel=True,
    channels=1,
    phantom_labels=(
        "No Finding",
        "Cardiomegaly",
        "Lung Opacity",
        "Pneumothorax",
        "Pleural Effusion",
        "Support Devices",
    ),
    modality_phrase="a frontal chest radiograph",
)

ISIC = DatasetSpec(
    name="isic",
    modality="derm",
    labels=("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"),
    descriptions={
        "MEL": "melanoma",
        "NV": "a benign melanocytic nevus",
        "BCC": "basal cell carcinoma",
        "AK": "actinic keratosis",
        "BKL": "a benign keratosis",
        "DF": "a dermatofibroma",
        "VASC": "a vascular lesion",
        "SCC": "squamous cell carcinoma",
        "UNK": "a skin lesion of unknown type",
    },
    multilabel=False,
    channels=3,
    phantom_labels=("MEL", "NV", "BKL"),
    modality_phrase="a dermoscopy image of a skin lesion",
)

DR_GRADES = ("No DR", "Mild NPDR", "Moderate NPDR", "Severe NPDR", "Proliferative DR")

FUNDUS = DatasetSpec(
    name="fundus",
    modality="fundus",
    labels=DR_GRADES,
    descriptions={
        "No DR": "no diabetic retinopathy",
        "Mild NPDR": "mild non-proliferative diabetic retinopathy",
        "Moderate NPDR": "moderate non-proliferative diabetic retinopathy",
        "Severe NPDR": "severe non-proliferative diabetic retinopathy",
        "Proliferative DR": "proliferative diabetic retinopathy",
    },
    multilabel=False,
    channels=3,
    phantom_labels=DR_GRADES,
    modality_phrase="a colour retinal fundus photograph",
)

HISTOPATH = DatasetSpec(
    name="histopath",
    modality="histo",
    labels=("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"),
    descriptions={
        "ADI": "adipose tissue",
        "BACK": "background without tissue",
        "DEB": "debris and necrosis",
        "LYM": "lymphocytes",
        "MUC": "mucus",
        "MUS": "smooth muscle",
        "NORM": "normal colon mucosa",
        "STR": "cancer-associated stroma",
        "TUM": "colorectal adenocarcinoma epithelium",
    },
    multilabel=False,
    channels=3,
    phantom_labels=("ADI", "BACK", "LYM", "MUC", "NORM", "STR", "TUM"),
    modality_phrase="an H&E stained histology patch of colorectal tissue",
)

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (CHEXPERT, ISIC, FUNDUS, HISTOPATH)}
MODALITIES: dict[str, DatasetSpec] = {spec.modality: spec for spec in DATASETS.values()}


def get_dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(f"unknown dataset '{name}' (known: {', '.join(DATASETS)})") from None


def dataset_for_modality(modality: str) -> DatasetSpec:
    try:
        return MODALITIES[modality]
    except KeyError:
        raise ConfigError(f"unknown modality '{modality}' (known: {', '.join(MODALITIES)})") from None
