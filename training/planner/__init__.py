"""TACE planner, policy half: prompts, answer parsing, conflict rules, privacy, policy backends.

One concern per module: :mod:`.prompts` (seed Figures 10-12), :mod:`.parsing` (LLM answers and
free-text TACE reports), :mod:`.prior` (practice frequencies), :mod:`.rules` (clinical-conflict
refinement), :mod:`.deid` (de-identified observations and the outgoing-request guard),
:mod:`.policy` (offline, OpenAI-compatible and local transformers backends).
Heavy clients (openai, transformers, torch) are imported only when a backend uses them.
"""

from oncoplan.training.planner.deid import Observation, PrivacyError, build_observation, check_outgoing
from oncoplan.training.planner.parsing import AnswerRejected, parse_answer, parse_report, report_keywords
from oncoplan.training.planner.policy import (
    Candidate,
    LLMConfig,
    OfflinePolicy,
    OpenAIPolicy,
    Policy,
    TransformersPolicy,
    make_policy,
)
from oncoplan.training.planner.prior import Prior
from oncoplan.training.planner.rules import RefinementReport, Removal, refine

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
