"""The TACE policy: candidate protocols for one case, from an LLM or from the practice prior.

Backends share one interface (:class:`Policy`: ``propose(observation, k)`` -> ranked
:class:`Candidate` list, each with its reason and refinement report):

* :class:`OfflinePolicy` (the default; no network): every conflict-free protocol of the action
  set with 1..``max_drugs`` drugs and 1..``max_embolics`` embolics, ordered by the practice prior
  (:mod:`.prior`; ties in action-base order), top k.
* :class:`OpenAIPolicy`: any OpenAI-compatible endpoint through the ``openai`` client (GPT-4o by
  default). Opt-in: it refuses to exist without ``allow_send=True``. Every request body is
  checked by :func:`.deid.check_outgoing` twice, before the client builds it and on the exact
  bytes it sends (an HTTP request hook), and is refused if it holds a UID, a date or one of the
  patient's identifiers.
* :class:`TransformersPolicy`: a local Hugging Face chat model (its chat template), for sites
  whose data may not leave; text observation only.

LLM backends use the seed's prompts (:mod:`.prompts`: ``mode="action_set"`` is Figure 10, the
seed's policy model, which lists a pool of drugs and embolics; ``mode="plan"`` is Figure 11/12,
one plan) and the same strict parsing (:mod:`.parsing`). A rejected answer is retried
``max_retries`` times with the rejection reason; then, and on any timeout, HTTP or model error
or privacy refusal, the policy falls back to the offline policy with a logged reason (also in
``last_fallback_reason`` and in each candidate's reason). The accepted answer is refined: first
by an optional reasoning model (seed B.1 used DeepSeek-R1; it may only remove items), then always
by the deterministic rules (:mod:`.rules`). With ``mode="action_set"`` the candidates are the
pool's conflict-free sub-protocols ranked by the prior; with ``mode="plan"`` the first candidate
is the refined plan. Fewer than k are padded from the offline policy (marked as such).
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from typing import Protocol as TypingProtocol

from oncoplan.planner.deid import Observation, PrivacyError, check_outgoing, check_text
from oncoplan.planner.parsing import AnswerRejected, ParsedAnswer, parse_answer
from oncoplan.planner.prior import Prior
from oncoplan.planner.prompts import (
    render_plan_prompt,
    render_policy_prompt,
    render_refinement_prompt,
    split_action_set,
)
from oncoplan.planner.rules import RefinementReport, Removal, refine
from oncoplan.tace.actions import ACTION_BASE, Protocol, conflicts, protocol_space

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gpt-4o"
DEFAULT_TEMPERATURE = 0.2  # MeWM example.py
DEFAULT_TIMEOUT_S = 60.0
ENV_BASE_URL = "ONCOPLAN_LLM_BASE_URL"
ENV_MODEL = "ONCOPLAN_LLM_MODEL"
ENV_API_KEY = "OPENAI_API_KEY"
ENV_REASONING_MODEL = "ONCOPLAN_LLM_REASONING_MODEL"
ENV_TIMEOUT = "ONCOPLAN_LLM_TIMEOUT"
MODES = ("action_set", "plan")
RETRY_MESSAGE = (
    "Your answer was rejected: {reason}. Answer again with one JSON object in the format of the "
    "example output, using only keywords from the list, and nothing else."
)
_MAX_REASON = 300


@dataclass(frozen=True)
class Candidate:
    """One proposed protocol: why, from which backend, its practice prior and its refinement."""

    protocol: Protocol
    reason: str
    source: str
    prior: float
    refinement: RefinementReport | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "protocol": str(self.protocol),
            "reason": self.reason,
            "source": self.source,
            "prior": self.prior,
            "refinement": None if self.refinement is None else self.refinement.to_dict(),
        }


class Policy(TypingProtocol):
    """Proposes up to k candidate protocols for one de-identified case, best first."""

    source: str

    def propose(self, observation: Observation | None, k: int = 5) -> list[Candidate]: ...


class BackendError(RuntimeError):
    """The LLM backend gave no answer (timeout, HTTP or connection error, model failure)."""


def _check_k(k: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")


class OfflinePolicy:
    """Conflict-free protocols of the action set ranked by the practice prior; no network."""

    source = "offline"

    def __init__(
        self,
        action_set: Iterable[str] = ACTION_BASE,
        prior: Prior | None = None,
        max_drugs: int = 3,
        max_embolics: int = 2,
    ) -> None:
        self.drugs, self.embolics = split_action_set(action_set)
        self.action_set = self.drugs + self.embolics
        self.prior = prior if prior is not None else Prior.from_practice()
        self.max_drugs, self.max_embolics = max_drugs, max_embolics
        self._ranked = self.ranked(self.drugs, self.embolics)
        self._norm = sum(s for _, s in self._ranked) or 1.0

    def ranked(self, drugs: Iterable[str], embolics: Iterable[str]) -> list[tuple[Protocol, float]]:
        """Every conflict-free protocol over `drugs` x `embolics` (within the size limits), best first."""
        space = protocol_space(tuple(drugs), tuple(embolics), self.max_drugs, self.max_embolics)
        scored = [(p, self.prior.score(p)) for p in space if not conflicts(p.items)]
        return sorted(scored, key=lambda ps: (-ps[1], ps[0].base_order()))

    def probability(self, protocol: Protocol) -> float:
        """Prior of `protocol`, normalised over this policy's whole candidate space."""
        return self.prior.score(protocol) / self._norm

    def describe(self, protocol: Protocol) -> str:
        share = self.prior.protocol_freq.get(str(protocol), 0.0)
        used = f"{share:.0%} of practice protocols" if share > 0 else "not seen in practice"
        return f"practice prior {self.probability(protocol):.3f} ({used}; {self.prior.source})"

    def propose(self, observation: Observation | None = None, k: int = 5) -> list[Candidate]:
        _check_k(k)
        return [
            Candidate(p, f"offline: {self.describe(p)}", self.source, self.probability(p), RefinementReport(p, p))
            for p, _ in self._ranked[:k]
        ]


class _ChatPolicy:
    """What the LLM backends share: prompts, retries, parsing, refinement, candidates, fallback."""

    source = "llm"
    reasoning_name: str | None = None

    def __init__(
        self,
        *,
        action_set: Iterable[str],
        prior: Prior | None,
        mode: str,
        max_retries: int,
        fallback: OfflinePolicy | None,
        max_drugs: int,
        max_embolics: int,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.mode, self.max_retries = mode, max_retries
        self.offline = fallback or OfflinePolicy(action_set, prior, max_drugs, max_embolics)
        self.action_set = self.offline.action_set
        self.prior = self.offline.prior
        self.last_fallback_reason: str | None = None
        self.last_messages: list[dict[str, Any]] = []

    # -- backend hooks -----------------------------------------------------------------------
    supports_images = False

    def _complete(self, messages: list[dict[str, Any]], observation: Observation, reasoning: bool = False) -> str:
        raise NotImplementedError

    # -- shared logic ------------------------------------------------------------------------
    def messages_for(self, observation: Observation) -> list[dict[str, Any]]:
        """The chat messages of the seed prompt for this case (images only where supported)."""
        images = observation.images if self.supports_images else ()
        note = (observation.image_note or "attached CT image") if images else None
        render = render_policy_prompt if self.mode == "action_set" else render_plan_prompt
        text = render(observation.text, self.action_set, note)
        if not images:
            return [{"role": "user", "content": text}]
        content: list[dict[str, Any]] = [{"type": "text", "text": text}]
        for png in images:
            url = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
            content.append({"type": "image_url", "image_url": {"url": url}})
        return [{"role": "user", "content": content}]

    def ask(self, observation: Observation) -> ParsedAnswer:
        """One validated answer; raises BackendError, PrivacyError or AnswerRejected (after retries)."""
        messages = self.messages_for(observation)
        attempts = 1 + self.max_retries
        for attempt in range(1, attempts + 1):
            self.last_messages = messages
            text = self._complete(messages, observation)
            try:
                return parse_answer(text, self.action_set)
            except AnswerRejected as exc:
                log.warning("%s: answer %d/%d rejected: %s", self.source, attempt, attempts, exc.reason)
                if attempt == attempts:
                    raise AnswerRejected(f"no valid answer in {attempts} attempt(s); last: {exc.reason}") from None
                messages = [
                    *messages,
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": RETRY_MESSAGE.format(reason=exc.reason)},
                ]
        raise AssertionError("unreachable")

    def refine(self, protocol: Protocol, observation: Observation) -> RefinementReport:
        """Optional reasoning-model refinement, then the deterministic rules (always)."""
        first = RefinementReport(protocol, protocol)
        if self.reasoning_name:
            first = self._reasoning_refine(protocol, observation)
        return first.then(refine(first.refined, self.prior))

    def _reasoning_refine(self, protocol: Protocol, observation: Observation) -> RefinementReport:
        name = self.reasoning_name
        messages = [{"role": "user", "content": render_refinement_prompt(protocol, observation.text)}]
        try:
            parsed = parse_answer(self._complete(messages, observation, reasoning=True), ACTION_BASE, True)
        except (BackendError, PrivacyError, AnswerRejected) as exc:
            note = f"reasoning model {name} skipped: {exc}"
            log.warning("%s: %s", self.source, note)
            return RefinementReport(protocol, protocol, notes=(note,))
        kept = tuple(a for a in protocol.items if a in parsed.protocol.items)
        added = [a for a in parsed.protocol.items if a not in protocol.items]
        notes = (f"reasoning model {name} tried to add {', '.join(added)} (ignored)",) if added else ()
        refined = Protocol.of(kept)
        if not refined.drugs or not refined.embolics:
            note = f"reasoning model {name} answer ignored: it leaves no drug or no embolic"
            log.warning("%s: %s", self.source, note)
            return RefinementReport(protocol, protocol, notes=(*notes, note))
        why = " ".join((parsed.reason or "no reason given").split())[:_MAX_REASON]
        removed = tuple(
            Removal(a, f"reasoning model: {why}", kept, f"reasoning-model:{name}")
            for a in protocol.items
            if a not in kept
        )
        return RefinementReport(protocol, refined, removed, notes)

    def _fallback(self, observation: Observation | None, k: int, reason: str) -> list[Candidate]:
        self.last_fallback_reason = reason
        return [replace(c, reason=f"fallback ({reason}); {c.reason}") for c in self.offline.propose(observation, k)]

    def propose(self, observation: Observation | None, k: int = 5) -> list[Candidate]:
        _check_k(k)
        self.last_fallback_reason = None
        if observation is None:
            return self._fallback(None, k, "no observation")
        try:
            parsed = self.ask(observation)
        except PrivacyError as exc:
            log.error("%s: privacy guard refused the request, falling back to the offline policy: %s", self.source, exc)
            return self._fallback(observation, k, f"privacy guard: {exc}")
        except (BackendError, AnswerRejected) as exc:
            log.warning("%s unavailable, falling back to the offline policy: %s", self.source, exc)
            return self._fallback(observation, k, str(exc))
        report = self.refine(parsed.protocol, observation)
        out: list[Candidate] = []
        removed = f"; rules removed {', '.join(r.item for r in report.removed)}" if report.removed else ""
        if self.mode == "plan":
            reason = f"{self.source} plan {parsed.protocol}{removed}"
            out.append(Candidate(report.refined, reason, self.source, self.offline.probability(report.refined), report))
        else:
            for p, _ in self.offline.ranked(report.refined.drugs, report.refined.embolics)[:k]:
                reason = f"in the action set {report.refined} from {self.source}{removed}; {self.offline.describe(p)}"
                out.append(Candidate(p, reason, self.source, self.offline.probability(p), report))
        if len(out) < k:
            seen = {c.protocol for c in out}
            pad = [c for c in self.offline.propose(observation, k + len(out)) if c.protocol not in seen]
            note = f"padding: the {self.source} answer gives {len(out)} candidate(s)"
            out += [replace(c, reason=f"{note}; {c.reason}") for c in pad[: k - len(out)]]
        return out


# -- OpenAI-compatible endpoints -------------------------------------------------------------------


@dataclass(frozen=True)
class LLMConfig:
    """Where and how to call an OpenAI-compatible endpoint."""

    base_url: str | None = None  # None: the openai client's default
    model: str = DEFAULT_MODEL
    api_key: str | None = field(default=None, repr=False)
    reasoning_model: str | None = None  # e.g. "deepseek-reasoner" (DeepSeek-R1); None: no call
    timeout_s: float = DEFAULT_TIMEOUT_S
    temperature: float = DEFAULT_TEMPERATURE

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> LLMConfig:
        """From ONCOPLAN_LLM_BASE_URL, ONCOPLAN_LLM_MODEL, OPENAI_API_KEY, ONCOPLAN_LLM_REASONING_MODEL
        and ONCOPLAN_LLM_TIMEOUT (seconds); keyword overrides that are not None win."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {
            "base_url": env.get(ENV_BASE_URL) or None,
            "model": env.get(ENV_MODEL) or DEFAULT_MODEL,
            "api_key": env.get(ENV_API_KEY) or None,
            "reasoning_model": env.get(ENV_REASONING_MODEL) or None,
        }
        if env.get(ENV_TIMEOUT):
            try:
                values["timeout_s"] = float(env[ENV_TIMEOUT])
            except ValueError:
                raise ValueError(f"{ENV_TIMEOUT} must be a number of seconds, got {env[ENV_TIMEOUT]!r}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _privacy_cause(exc: BaseException) -> PrivacyError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, PrivacyError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class OpenAIPolicy(_ChatPolicy):
    """An LLM policy over any OpenAI-compatible endpoint; constructing it needs ``allow_send=True``.

    The rendered CT slice goes as a PNG data URL (``send_images=False`` for text-only endpoints).
    """

    def __init__(
        self,
        config: LLMConfig | None = None,
        *,
        allow_send: bool = False,
        action_set: Iterable[str] = ACTION_BASE,
        prior: Prior | None = None,
        mode: str = "action_set",
        max_retries: int = 2,
        fallback: OfflinePolicy | None = None,
        max_drugs: int = 3,
        max_embolics: int = 2,
        send_images: bool = True,
    ) -> None:
        if allow_send is not True:
            raise PermissionError(
                "sending case data to an LLM service is opt-in: construct OpenAIPolicy(allow_send=True)"
            )
        super().__init__(
            action_set=action_set,
            prior=prior,
            mode=mode,
            max_retries=max_retries,
            fallback=fallback,
            max_drugs=max_drugs,
            max_embolics=max_embolics,
        )
        self.config = config if config is not None else LLMConfig.from_env()
        if not self.config.api_key:
            raise ValueError(f"no API key for the LLM service: set {ENV_API_KEY} or pass LLMConfig(api_key=...)")
        self.source = f"openai:{self.config.model}"
        self.reasoning_name = self.config.reasoning_model
        self.supports_images = send_images  # False for text-only endpoints

    def _complete(self, messages: list[dict[str, Any]], observation: Observation, reasoning: bool = False) -> str:
        model = self.config.reasoning_model if reasoning else self.config.model
        return chat_completion(self.config, messages, observation.forbidden, model=model, reasoning=reasoning)


def chat_completion(
    config: LLMConfig,
    messages: list[dict[str, Any]],
    forbidden: Iterable[str] = (),
    *,
    model: str | None = None,
    reasoning: bool = False,
) -> str:
    """One chat completion from an OpenAI-compatible endpoint (the one client of OncoPlan's LLM callers: the
    TACE policy, the CTV note reader). The request is checked by :func:`.deid.check_outgoing` twice, before
    the client builds it and on the exact bytes it sends, against `forbidden` (the case's identifiers), UIDs
    and dates: :class:`PrivacyError`, nothing sent. No answer (timeout, HTTP, connection): BackendError."""
    import openai

    model = model or config.model
    extra = {} if reasoning else {"temperature": config.temperature}
    forbidden = frozenset(forbidden)
    # First check: what we are about to hand to the client; second: the exact bytes it sends.
    names = (model,)
    check_outgoing(json.dumps({"model": model, "messages": messages, **extra}), forbidden, names)

    def guard(request: Any) -> None:
        check_outgoing(request.content, forbidden, names)
        check_text(request.url.path, forbidden)

    http_client = openai.DefaultHttpxClient(event_hooks={"request": [guard]})
    client = openai.OpenAI(
        api_key=config.api_key,
        base_url=config.base_url,
        timeout=config.timeout_s,
        max_retries=0,
        http_client=http_client,
    )
    try:
        with client:
            response = client.chat.completions.create(model=model, messages=messages, **extra)  # type: ignore[arg-type]
    except openai.APITimeoutError:
        raise BackendError(f"{model}: no answer within {config.timeout_s:g} s") from None
    except openai.APIConnectionError as exc:
        cause = _privacy_cause(exc)
        if cause is not None:
            raise cause from None
        raise BackendError(f"{model}: connection error ({exc})") from None
    except openai.APIStatusError as exc:
        raise BackendError(f"{model}: HTTP {exc.status_code} from the LLM service") from None
    except openai.OpenAIError as exc:
        raise BackendError(f"{model}: {type(exc).__name__}: {exc}") from None
    if not response.choices:
        return ""
    return response.choices[0].message.content or ""


# -- local Hugging Face chat models ------------------------------------------------------------------


class TransformersPolicy(_ChatPolicy):
    """An LLM policy on a local Hugging Face causal chat model (greedy decoding, chat template)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        action_set: Iterable[str] = ACTION_BASE,
        prior: Prior | None = None,
        mode: str = "action_set",
        max_retries: int = 2,
        fallback: OfflinePolicy | None = None,
        max_drugs: int = 3,
        max_embolics: int = 2,
        max_new_tokens: int = 256,
        load_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            action_set=action_set,
            prior=prior,
            mode=mode,
            max_retries=max_retries,
            fallback=fallback,
            max_drugs=max_drugs,
            max_embolics=max_embolics,
        )
        self.model, self.tokenizer, self.source = load_local_chat(model, tokenizer, load_kwargs)
        self.max_new_tokens = max_new_tokens

    def _complete(self, messages: list[dict[str, Any]], observation: Observation, reasoning: bool = False) -> str:
        return local_chat_completion(self.model, self.tokenizer, messages, self.max_new_tokens)


def load_local_chat(model: Any, tokenizer: Any = None, load_kwargs: Mapping[str, Any] | None = None) -> tuple:
    """(model, tokenizer, "transformers:<name>") of a local Hugging Face causal chat model (a folder or objects);
    ValueError when the tokenizer has no chat template."""
    name = None
    if isinstance(model, (str, os.PathLike)):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        name = str(model)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(name, **(load_kwargs or {}))
        model = AutoModelForCausalLM.from_pretrained(name, **(load_kwargs or {}))
    elif tokenizer is None:
        raise ValueError("a model object needs its tokenizer")
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the tokenizer has no chat template")
    source = f"transformers:{name or getattr(model.config, 'name_or_path', '') or type(model).__name__}"
    return model.eval(), tokenizer, source


def local_chat_completion(model: Any, tokenizer: Any, messages: list[dict[str, Any]], max_new_tokens: int = 256) -> str:
    """One greedy chat completion of a local model (its chat template); any failure is a BackendError."""
    import torch

    try:
        enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        enc = {k: v.to(model.device) for k, v in enc.items()}
        pad = tokenizer.pad_token_id
        pad = tokenizer.eos_token_id if pad is None else pad
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
        return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    except Exception as exc:  # any local failure is a fallback, not a crash
        raise BackendError(f"local model failed: {type(exc).__name__}: {exc}") from exc


def make_policy(kind: str = "offline", *, allow_send: bool = False, **kwargs: Any) -> Policy:
    """The policy named on the command line: ``offline`` (default), ``openai`` (opt-in) or ``transformers``
    (``model`` = a local model folder)."""
    if kind == "offline":
        return OfflinePolicy(**kwargs)
    if kind == "openai":
        return OpenAIPolicy(allow_send=allow_send, **kwargs)
    if kind == "transformers":
        return TransformersPolicy(kwargs.pop("model"), **kwargs)
    raise ValueError(f"unknown policy {kind!r}; expected {', '.join(POLICIES)}")


# -- the policy a user picks (CLI, app, MAP environment, evaluation) -----------------------------------

POLICIES = ("offline", "openai", "transformers")
ENV_POLICY = "ONCOPLAN_POLICY"
ENV_ALLOW_SEND = "ONCOPLAN_LLM_ALLOW_SEND"
ENV_TRANSFORMERS_MODEL = "ONCOPLAN_LLM_MODEL_DIR"


@dataclass(frozen=True)
class PolicyChoice:
    """Which policy plans: ``offline`` (the default; nothing leaves the machine), ``openai`` (an
    OpenAI-compatible endpoint: base URL, model, key from the environment; sending is opt-in by
    `allow_send`) or ``transformers`` (a local chat model folder). Arguments win over the environment:
    ONCOPLAN_POLICY, ONCOPLAN_LLM_ALLOW_SEND=1, ONCOPLAN_LLM_BASE_URL, ONCOPLAN_LLM_MODEL, OPENAI_API_KEY,
    ONCOPLAN_LLM_TIMEOUT (openai), ONCOPLAN_LLM_MODEL_DIR (transformers)."""

    kind: str = "offline"
    llm: LLMConfig | None = None  # openai
    model_dir: str | None = None  # transformers
    allow_send: bool = False

    @classmethod
    def resolve(
        cls,
        kind: str | None = None,
        *,
        allow_send: bool = False,
        model: str | None = None,
        base_url: str | None = None,
        env: Mapping[str, str] | None = None,
        what: str = "policy",
        sends: str = "the de-identified case",
    ) -> PolicyChoice:
        """The choice from arguments over the environment; a choice that cannot run is one line
        (:class:`~oncoplan.errors.InputError`), before any study is read. `what` names the caller in those
        lines ("policy", "note reader") and `sends` what it would send."""
        from oncoplan.errors import InputError

        env = os.environ if env is None else env
        kind = (kind or env.get(ENV_POLICY) or "offline").strip().lower()
        allow_send = allow_send or env.get(ENV_ALLOW_SEND, "").strip().lower() in ("1", "true", "yes")
        if kind == "offline":
            return cls()
        if kind == "openai":
            if not allow_send:
                raise InputError(
                    f"{what} openai sends {sends} to an LLM service: opt in with --allow-send (or {ENV_ALLOW_SEND}=1)"
                )
            try:
                config = LLMConfig.from_env(env, base_url=base_url, model=model)
            except ValueError as exc:
                raise InputError(f"{what} openai: {exc}") from None
            if not config.api_key:
                raise InputError(f"{what} openai: no API key; set {ENV_API_KEY} (never given on the command line)")
            if config.base_url and not config.base_url.startswith(("http://", "https://")):
                raise InputError(f"{what} openai: base URL {config.base_url!r} is not http(s)")
            return cls("openai", llm=config, allow_send=True)
        if kind == "transformers":
            folder = model or env.get(ENV_TRANSFORMERS_MODEL)
            if not folder or not os.path.isdir(folder):
                raise InputError(
                    f"{what} transformers: give a local model folder with --llm-model or {ENV_TRANSFORMERS_MODEL} "
                    f"(got {folder!r})"
                )
            if not os.path.isfile(os.path.join(folder, "config.json")):
                raise InputError(f"{what} transformers: {folder} is not a Hugging Face model folder (no config.json)")
            return cls("transformers", model_dir=str(folder))
        raise InputError(f"unknown policy {kind!r}; choose {', '.join(POLICIES)}")

    def build(
        self,
        action_set: Iterable[str] = ACTION_BASE,
        prior: Prior | None = None,
        max_drugs: int = 3,
        max_embolics: int = 2,
    ) -> Policy:
        """The policy; a local model that does not load gives the offline policy, its reason in
        ``last_fallback_reason`` (logged)."""
        shared = {"action_set": action_set, "prior": prior, "max_drugs": max_drugs, "max_embolics": max_embolics}
        if self.kind == "openai":
            return OpenAIPolicy(self.llm, allow_send=self.allow_send, **shared)
        if self.kind == "transformers":
            try:
                return TransformersPolicy(self.model_dir, **shared)
            except Exception as exc:  # a folder that is not a chat model: plan offline, say so
                offline = OfflinePolicy(**shared)
                reason = f"local model did not load: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
                log.warning("transformers policy: %s; planning with the offline policy", reason)
                offline.last_fallback_reason = reason  # type: ignore[attr-defined]
                return offline
        return OfflinePolicy(**shared)

    def label(self) -> str:
        if self.kind == "openai" and self.llm is not None:
            return f"openai:{self.llm.model}"
        if self.kind == "transformers":
            return f"transformers:{os.path.basename(str(self.model_dir).rstrip('/'))}"
        return "offline"

    def to_dict(self) -> dict[str, Any]:
        """What plan.json records of the choice (never the key)."""
        out: dict[str, Any] = {"kind": self.kind, "label": self.label()}
        if self.kind == "openai" and self.llm is not None:
            out |= {"base_url": self.llm.base_url or "(openai client default)", "model": self.llm.model}
            out["sends_deidentified_case"] = True
        if self.kind == "transformers":
            out["model_dir"] = self.model_dir
        return out
