"""What a phantom VLM is taught to say about an image: every phrase the CAS dimensions score with,
and the target of each phrase pair per training image.

- pathology: each label's finding pair (present/absent) of `knowledge.prompts.finding_pair`, over
  the dataset's whole label space (labels the phantoms never draw are always absent);
- checklist: each phantom label's checklist items, met where the phantom's item ground truth says
  so (`attributes["items"]`); an item the generator does not draw falls back to its label;
- anatomy and realism: the modality's items, met by phantoms of the modality unless their defect
  (implausible phantoms) or corruption violates them, and by no other modality or non-medical picture;
- modality: the modality phrases of all four modalities and the realism distractors, one class each;
- label prompts: `label_prompt(spec, labels)`, the text the diffusion model is conditioned on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from craft_ray.cas.dimensions import DISTRACTORS
from craft_ray.knowledge.checklists import ClinicalKnowledge
from craft_ray.knowledge.labels import MODALITIES, DatasetSpec
from craft_ray.knowledge.prompts import finding_pair, label_prompt


@dataclass
class PhraseIndex:
    texts: list[str] = field(default_factory=list)
    _index: dict[str, int] = field(default_factory=dict)

    def add(self, text: str) -> int:
        if text not in self._index:
            self._index[text] = len(self.texts)
            self.texts.append(text)
        return self._index[text]

    def pairs(self, pairs: list[tuple[str, str]]) -> torch.Tensor:
        """(P, 2) indices of (present, absent) phrases."""
        return torch.tensor([[self.add(p), self.add(a)] for p, a in pairs], dtype=torch.long)


@dataclass
class VLMTexts:
    spec: DatasetSpec
    phrases: PhraseIndex
    finding_pairs: torch.Tensor  # (L, 2) over spec.labels
    item_pairs: torch.Tensor  # (I, 2) checklist items of the phantom labels
    item_label: torch.Tensor  # (I,) column of spec.labels each item belongs to
    modality_item_pairs: torch.Tensor  # (M, 2) anatomy + realism items
    class_prompts: torch.Tensor  # (4 + len(DISTRACTORS),) modality phrases then distractors
    modality_class: dict[str, int]  # modality -> index into class_prompts
    item_ids: list[str] = field(default_factory=list)  # (I,) ids of item_pairs
    modality_item_ids: list[str] = field(default_factory=list)  # (M,) ids of modality_item_pairs

    @classmethod
    def build(cls, spec: DatasetSpec, knowledge: ClinicalKnowledge) -> VLMTexts:
        phrases = PhraseIndex()
        findings = phrases.pairs([finding_pair(spec, label) for label in spec.labels])
        checklist = [(i, lab) for lab in spec.phantom_labels for i in knowledge.for_label(spec.name, lab)]
        items = [(i.present, i.absent, spec.labels.index(lab)) for i, lab in checklist]
        item_pairs = phrases.pairs([(p, a) for p, a, _ in items])
        section = knowledge.anatomy(spec.modality) + knowledge.realism(spec.modality)
        modality_items = phrases.pairs([(i.present, i.absent) for i in section])
        modalities = list(MODALITIES)
        classes = [phrases.add(MODALITIES[m].modality_phrase) for m in modalities]
        classes += [phrases.add(d) for d in DISTRACTORS]
        return cls(
            spec,
            phrases,
            findings,
            item_pairs,
            torch.tensor([c for _, _, c in items], dtype=torch.long),
            modality_items,
            torch.tensor(classes, dtype=torch.long),
            {m: i for i, m in enumerate(modalities)},
            [i.id for i, _ in checklist],
            [i.id for i in section],
        )

    def label_prompt_ids(self, label_sets: list[list[str]]) -> torch.Tensor:
        return torch.tensor([self.phrases.add(label_prompt(self.spec, s)) for s in label_sets])

    def distractor_class(self, kind: int) -> int:
        return len(self.modality_class) + kind
