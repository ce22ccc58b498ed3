"""The coded concepts of a SEG's segments: property category and type per label, configurable, with defaults.

A segment is described by two codes (PS3.3 C.8.20.4): its category (CID 7150,
e.g. "Anatomical Structure", "Morphologically Abnormal Structure") and its type
(e.g. SNOMED CT "Liver"). A model states them per label in
``ModelResult.segment_codes``; a label without one gets the default here:
common anatomy as an anatomical structure, findings (nodule, lesion, tumour) as
morphologically abnormal structures, and anything else as a lesion, as before.
"""

from __future__ import annotations

import re

from pydicom.sr.coding import Code
from pydicom.sr.codedict import codes

CodeTriple = tuple[str, str, str]  # (coding scheme designator, code value, code meaning)

ANATOMY = {name: getattr(codes.SCT, attribute) for name, attribute in {
    "liver": "Liver", "spleen": "Spleen", "kidney": "Kidney", "lung": "Lung", "heart": "Heart",
    "bone": "Bone", "pancreas": "Pancreas", "aorta": "Aorta", "brain": "Brain", "prostate": "Prostate",
    "bladder": "Bladder", "stomach": "Stomach", "gallbladder": "Gallbladder", "vertebra": "Vertebra",
    "spinal cord": "SpinalCord", "esophagus": "Esophagus", "oesophagus": "Esophagus", "trachea": "Trachea",
    "muscle": "SkeletalMuscle", "fat": "AdiposeTissue", "colon": "Colon", "body": "EntireBody",
}.items()}
FINDINGS = {"nodule": codes.SCT.Nodule, "lesion": codes.SCT.Lesion, "tumour": codes.SCT.Tumor,
            "tumor": codes.SCT.Tumor, "neoplasm": codes.SCT.Neoplasm}


def _key(label: str) -> str:
    """A label compared case-insensitively, with ``_``/``-`` as spaces and a plural ``s`` dropped."""
    key = re.sub(r"[\s_\-]+", " ", label.strip().lower())
    return key[:-1] if key.endswith("s") and key[:-1] in {**ANATOMY, **FINDINGS} else key


def segment_coding(label: str, configured: dict[str, tuple[CodeTriple, CodeTriple]] | None = None
                   ) -> tuple[Code, Code]:
    """(category, type) codes of the segment named ``label``: the configured pair, else the default."""
    if configured and label in configured:
        category, kind = configured[label]
        return Code(category[1], category[0], category[2]), Code(kind[1], kind[0], kind[2])
    key = _key(label)
    if key in ANATOMY:
        return codes.SCT.AnatomicalStructure, ANATOMY[key]
    return codes.SCT.MorphologicallyAbnormalStructure, FINDINGS.get(key, codes.SCT.Lesion)
