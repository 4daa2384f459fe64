"""Clinical knowledge: label spaces, checklists, prompts and enrichment."""

from __future__ import annotations

import random

import pytest
import yaml

from craft_ray.errors import ConfigError
from craft_ray.knowledge.checklists import load_knowledge
from craft_ray.knowledge.labels import DATASETS, MODALITIES
from craft_ray.knowledge.prompts import (
    NoEnrichment,
    PhraseEnrichment,
    build_prompt,
    finding_pair,
    label_prompt,
)


def test_every_label_and_modality_has_a_checklist():
    kb = load_knowledge()
    for spec in DATASETS.values():
        for label in spec.labels:
            items = kb.for_label(spec.name, label)
            assert 4 <= len(items) <= 8, (spec.name, label)
            for item in items:
                assert (
                    item.question.endswith("?")
                    and item.present
                    and item.absent
                    and item.present != item.absent
                )
    for modality in MODALITIES:
        assert len(kb.anatomy(modality)) >= 4 and len(kb.realism(modality)) >= 4
    ids = [i.id for i in kb.all_items()]
    assert len(ids) == len(set(ids))


def test_overlay_replaces_items_and_rejects_bad_files(tmp_path):
    overlay = tmp_path / "mllm.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {
                "version": 3,
                "name": "mllm-checklists",
                "labels": {
                    "isic": {
                        "MEL": [
                            {
                                "question": "Is there a blue-white veil?",
                                "present": "a veil",
                                "absent": "no veil",
                            }
                        ]
                    }
                },
            }
        )
    )
    kb = load_knowledge([overlay])
    assert [i.question for i in kb.for_label("isic", "MEL")] == ["Is there a blue-white veil?"]
    assert kb.versions == ["craft-static-kb@1", "mllm-checklists@3"]
    assert len(kb.for_label("isic", "NV")) >= 4  # untouched labels keep the base
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {"labels": {"isic": {"Melanoma": [{"question": "q?", "present": "a", "absent": "b"}]}}}
        )
    )
    with pytest.raises(ConfigError, match=r"unknown label\(s\) \['Melanoma'\]"):
        load_knowledge([bad])
    bad.write_text(yaml.safe_dump({"labels": {"isic": {"MEL": [{"question": "q?", "present": "a"}]}}}))
    with pytest.raises(ConfigError, match=r"isic:MEL\[0\]: missing \['absent'\]"):
        load_knowledge([bad])


def test_prompts_and_enrichment():
    chest = DATASETS["chexpert"]
    assert label_prompt(chest, ["Pleural Effusion", "Cardiomegaly"]) == (
        "a frontal chest radiograph showing cardiomegaly and a pleural effusion"
    )
    assert (
        label_prompt(chest, ["No Finding"])
        == "a frontal chest radiograph with no acute cardiopulmonary abnormality"
    )
    present, absent = finding_pair(chest, "No Finding")
    assert "abnormality" in absent and "without" not in absent
    assert finding_pair(DATASETS["isic"], "MEL")[1].endswith("without melanoma")
    kb = load_knowledge()
    enricher = PhraseEnrichment.from_knowledge(chest, kb, per_label=2)
    a = build_prompt(chest, ["Cardiomegaly"], enricher, random.Random(1))
    assert a == build_prompt(chest, ["Cardiomegaly"], enricher, random.Random(1))
    extra = a.split(", ", 1)[1].split(", ")
    assert len(extra) == 2 and set(extra) <= {i.present for i in kb.for_label("chexpert", "Cardiomegaly")}
    assert build_prompt(chest, ["Cardiomegaly"], NoEnrichment(), random.Random(1)) == label_prompt(
        chest, ["Cardiomegaly"]
    )
    with pytest.raises(ConfigError, match="unknown label"):
        label_prompt(chest, ["Pnemonia"])


def test_cached_enrichment_file(tmp_path):
    isic = DATASETS["isic"]
    path = tmp_path / "enrich.yaml"
    path.write_text(yaml.safe_dump({"MEL": ["an atypical network"], "NV": ["a regular network"]}))
    enricher = PhraseEnrichment.from_file(isic, path)
    assert build_prompt(isic, ["MEL"], enricher, random.Random(0)).endswith(", an atypical network")
    assert build_prompt(isic, ["BCC"], enricher, random.Random(0)) == label_prompt(isic, ["BCC"])
    path.write_text(yaml.safe_dump({"Melanoma": ["x"]}))
    with pytest.raises(ConfigError, match="unknown label"):
        PhraseEnrichment.from_file(isic, path)
