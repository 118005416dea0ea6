"""The TACE planner: policies (offline, OpenAI-compatible, local transformers), de-identification,
conflict rules, heuristics and the world-model search.

One concern per module: :mod:`.prompts` (seed Figures 10-12), :mod:`.parsing` (LLM answers and
free-text TACE reports), :mod:`.prior` (practice frequencies), :mod:`.rules` (clinical-conflict
refinement), :mod:`.deid` (de-identified observations and the outgoing-request guard),
:mod:`.policy` (offline, OpenAI-compatible and local transformers backends), :mod:`.heuristic` and
:mod:`.response_heuristic` (risk of a simulated outcome), :mod:`.search` (the world-model search),
:mod:`.models` (the three bundles loaded as the planner uses them), :mod:`.separation`.
Heavy clients (openai, transformers, torch) are imported only when a backend uses them.
"""

from oncoplan.planner.deid import Observation, PrivacyError, build_observation, check_outgoing
from oncoplan.planner.parsing import AnswerRejected, parse_answer, parse_report, report_keywords
from oncoplan.planner.policy import (
    Candidate,
    LLMConfig,
    OfflinePolicy,
    OpenAIPolicy,
    Policy,
    TransformersPolicy,
    make_policy,
)
from oncoplan.planner.prior import Prior
from oncoplan.planner.rules import RefinementReport, Removal, refine

__all__ = [
    "AnswerRejected",
    "Candidate",
    "LLMConfig",
    "Observation",
    "OfflinePolicy",
    "OpenAIPolicy",
    "Policy",
    "Prior",
    "PrivacyError",
    "RefinementReport",
    "Removal",
    "TransformersPolicy",
    "build_observation",
    "check_outgoing",
    "make_policy",
    "parse_answer",
    "parse_report",
    "refine",
    "report_keywords",
]
