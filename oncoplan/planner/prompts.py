"""The seed's policy prompt templates (MeWM Figures 10, 11, 12) and the refinement prompt.

Figure 10 (the policy model: "list potential TACE drug and embolism sets", answer keys
"Chemotherapy Drugs" / "Embolization Materials"), Figure 11 (one plan over the larger action
set, answer key "keywords") and Figure 12 (the same for the HCC-TACE-Seg action set) keep the
seed's wording. Departures, all deliberate:

* the action lists are rendered from the action set in use (the whole action base or the
  HCC-TACE-Seg set), not copied: the seed's lists repeat Idarubicin, list THP next to
  Pirarubicin (one drug, written here "Pirarubicin (THP)") and leave out Doxorubicin, KMG and
  LC Beads in places;
* the example output is valid JSON without the case key (the seed writes ``001: {...}``),
  and its keywords are the seed's where they lie in the action set, else drawn from it;
* the example input has no ``patient_id`` and the case's input is the de-identified
  observation text (:mod:`.deid`); the CT image travels as an attached image;
* a closing line asks for the JSON object only.

The refinement prompt (seed B.1: DeepSeek-R1 "reasons the clinical conflicts in the current
action set and summarizes a better action set using clinical guidelines") is not printed in the
seed; its wording here is ours.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from string import Template

from oncoplan.tace.actions import DRUGS, EMBOLICS, TCIA_DRUGS, TCIA_EMBOLICS, Protocol, canonical

POLICY_TEMPLATE = Template(
    """You are a radiation oncologist, please **list potential TACE drug and embolism sets** \
based on the patient's pre-treatment CT image. Please follow the below guidelines:

### **Task Description**
1. Analyze the input CT images and output potential TACE chemotherapy drug and embolization \
material sets for treatment. You can include any drugs and embolisms that you think may be \
helpful for the treatment. Chemotherapy drugs and embolization materials are limited to those \
in the Action Base.
2. The TACE action set is output in JSON format, including treatment plan keywords such as \
chemotherapy drugs and embolization materials.

### **Action Base**
#### **Chemotherapy Drugs**
$drugs
#### **Embolization Materials**
$embolics

### **Example**
**Input**
"image": {image_property}
**Output**
{"Chemotherapy Drugs": "$example_drugs", "Embolization Materials": "$example_embolics"}

### **Input**
"image": $image
"observation": $observation

Answer with one JSON object in the format of the example output and nothing else."""
)

PLAN_TEMPLATE = Template(
    """You are a radiation oncologist, please design a TACE treatment plan based on the \
patient's pre-treatment CT image. Please follow the below guidelines:

### **Task Description**
1. Analyze the input CT images and output the TACE treatment plan that you think is \
appropriate for the patient. The plan should include chemotherapy drugs and embolization \
materials that comply with clinical guidelines. Chemotherapy drugs and embolization materials \
are limited to those in the Action Set.
2. The TACE treatment plan is output in JSON format, including treatment plan keywords such as \
chemotherapy drugs and embolization materials.

### **Action Set**
#### **Chemotherapy Drugs**
$drugs
#### **Embolization Materials**
$embolics

### **Example**
**Input**
"image": {image_property}
**Output**
{"keywords": "$example_keywords"}

### **Input**
"image": $image
"observation": $observation

Answer with one JSON object in the format of the example output and nothing else."""
)

REFINE_TEMPLATE = Template(
    """You are an interventional oncologist. A policy model proposed the TACE action set below \
for one patient. Reason about the clinical conflicts in this action set and summarize a better \
action set using clinical guidelines for the individual patient (e.g., multiple platinum-based \
drugs cannot be used simultaneously). Only remove items; do not add any.

### **Proposed Action Set**
{"Chemotherapy Drugs": "$drugs", "Embolization Materials": "$embolics"}

### **Patient**
"observation": $observation

Answer with one JSON object and nothing else:
{"Chemotherapy Drugs": "...", "Embolization Materials": "...", "reason": "..."}"""
)

# The seed's example answers (Figure 10, 11, 12).
FIGURE10_EXAMPLE = (
    ("Raltitrexed", "Lobaplatin", "Oxaliplatin", "Mitomycin", "THP"),
    ("Lipiodol", "Gelatin Sponge", "PVA", "NBCA"),  # sic: a pool; the rules refine it (PVA vs Gelatin Sponge)
)
FIGURE11_EXAMPLE = ("Raltitrexed", "Lobaplatin", "Lipiodol", "Gelatin Sponge")
FIGURE12_EXAMPLE = ("Doxorubicin", "LC Beads")


def split_action_set(action_set: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(drugs, embolics) of an action set, canonical, in action-base order; ValueError if empty."""
    names = {canonical(a) for a in action_set}
    drugs = tuple(d for d in DRUGS if d in names)
    embolics = tuple(e for e in EMBOLICS if e in names)
    if not drugs or not embolics:
        raise ValueError("an action set needs at least one drug and one embolic")
    return drugs, embolics


def is_tcia_set(action_set: Iterable[str]) -> bool:
    """Whether `action_set` is the HCC-TACE-Seg set (Figure 12)."""
    return split_action_set(action_set) == split_action_set(TCIA_DRUGS + TCIA_EMBOLICS)


def _listing(names: Iterable[str]) -> str:
    return "\n".join(f"- {'Pirarubicin (THP)' if n == 'Pirarubicin' else n}" for n in names)


def _example(seed: Iterable[str], allowed: tuple[str, ...], fallback_n: int) -> list[str]:
    seed = list(seed)
    if all(canonical(s) in allowed for s in seed):
        return seed
    return list(allowed[:fallback_n])


def _inputs(observation: str, image: str | None) -> dict[str, str]:
    return {
        "observation": json_string(observation),
        "image": image if image else "none (text observation only)",
    }


def json_string(text: str) -> str:
    """`text` as a JSON string literal (quotes and escapes), for the Input section."""
    return json.dumps(text, ensure_ascii=False)


def render_policy_prompt(observation: str, action_set: Iterable[str], image: str | None = None) -> str:
    """Figure 10 over `action_set`; `image` describes the attached image(s) (None: none)."""
    drugs, embolics = split_action_set(action_set)
    return POLICY_TEMPLATE.substitute(
        drugs=_listing(drugs),
        embolics=_listing(embolics),
        example_drugs="; ".join(_example(FIGURE10_EXAMPLE[0], drugs, 3)),
        example_embolics="; ".join(_example(FIGURE10_EXAMPLE[1], embolics, 2)),
        **_inputs(observation, image),
    )


def render_plan_prompt(observation: str, action_set: Iterable[str], image: str | None = None) -> str:
    """Figure 12 for the HCC-TACE-Seg set, Figure 11 for any other action set."""
    action_set = tuple(action_set)
    drugs, embolics = split_action_set(action_set)
    seed = FIGURE12_EXAMPLE if is_tcia_set(action_set) else FIGURE11_EXAMPLE
    example = [s for s in seed if canonical(s) in drugs] or list(drugs[:1])
    example += [s for s in seed if canonical(s) in embolics] or list(embolics[:1])
    return PLAN_TEMPLATE.substitute(
        drugs=_listing(drugs),
        embolics=_listing(embolics),
        example_keywords="; ".join(example),
        **_inputs(observation, image),
    )


def render_refinement_prompt(protocol: Protocol, observation: str) -> str:
    """The reasoning-model refinement prompt for one proposed action set."""
    return REFINE_TEMPLATE.substitute(
        drugs="; ".join(protocol.drugs),
        embolics="; ".join(protocol.embolics),
        observation=json_string(observation),
    )
