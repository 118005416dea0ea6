"""LLMSeg network: a CrossBlock at every level, text changes the output, LM out of checkpoints,
and the text encoder over the embedded MiniLM, a causal LM (tiny Llama) and a CLIP text tower."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from oncoplan.ctv.network import ContextUNet, CrossBlock, TextGuidedSegmenter
from oncoplan.ctv.text_encoder import PromptedTextEncoder, default_model_path, is_student_key

NOTES = ["N1, breast conserving surgery, left side", "N0, total mastectomy surgery, right side"]
TINY = (4, 8, 8, 16, 16)


@pytest.fixture(scope="module")
def minilm() -> PromptedTextEncoder:
    return PromptedTextEncoder(n_prompts=2, prompt_length=8)


def _tiny_lm(tmp_path: Path, kind: str) -> str:
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(default_model_path())  # any offline tokenizer will do
    small = {
        "vocab_size": tok.vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    }
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**small, num_key_value_heads=2))
    else:
        model = CLIPTextModel(CLIPTextConfig(**small, max_position_embeddings=128, bos_token_id=101, eos_token_id=102))
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    return str(tmp_path)


def test_minilm_default_context_shape_and_gradients(minilm: PromptedTextEncoder) -> None:
    context = minilm(NOTES)
    assert context.shape == (2, 2, 384)
    assert not torch.allclose(context[0], context[1])  # the note matters
    context.sum().backward()
    assert minilm.prompts.grad.abs().sum() > 0 and minilm.seg.grad.abs().sum() > 0  # [SEG] trains (see card)
    assert all(p.grad is None for p in minilm.lm.parameters())  # the LM stays frozen
    minilm.zero_grad()


@pytest.mark.parametrize("kind", ["llama", "clip"])
def test_other_language_models_load_from_a_local_folder_with_or_without_adapters(tmp_path: Path, kind: str) -> None:
    encoder = PromptedTextEncoder(_tiny_lm(tmp_path, kind), n_prompts=3, prompt_length=4)
    context = encoder(NOTES)
    assert context.shape == (2, 3, 32)
    context.sum().backward()
    assert encoder.prompts.grad.abs().sum() > 0
    adapted = PromptedTextEncoder(_tiny_lm(tmp_path, kind), n_prompts=3, prompt_length=4, lora_rank=2)
    assert adapted.adapter_layers() and adapted(["left breast, lumpectomy, pN1a"]).shape == (1, 3, 32)


def test_causal_lm_seg_token_sees_the_whole_note(tmp_path: Path) -> None:
    """With a causal LM, [SEG] must come after the note: change only the last word, context changes."""
    encoder = PromptedTextEncoder(_tiny_lm(tmp_path, "llama"))
    a, b = encoder(["N1, breast conserving surgery, left side", "N1, breast conserving surgery, right side"])
    assert not torch.allclose(a, b)


def test_cross_block_at_every_level_and_text_changes_output(minilm: PromptedTextEncoder) -> None:
    torch.manual_seed(0)
    net = TextGuidedSegmenter(ContextUNet(channels=TINY, text_dim=minilm.width), minilm).eval()
    assert sum(isinstance(m, CrossBlock) for m in net.modules()) == 5
    image = torch.rand(1, 1, 32, 32, 16)
    with torch.no_grad():
        left, right = net(image, NOTES[:1]), net(image, NOTES[1:])
    assert left.shape == (1, 2, 32, 32, 16)
    assert (left - right).abs().max() > 1e-4


def test_vision_only_baseline_has_no_text_path() -> None:
    net = TextGuidedSegmenter(ContextUNet(channels=TINY, text_dim=None))
    assert not any(isinstance(m, CrossBlock) for m in net.modules())
    assert net(torch.rand(2, 1, 32, 32, 16)).shape == (2, 2, 32, 32, 16)
    with pytest.raises(ValueError):
        TextGuidedSegmenter(ContextUNet(channels=TINY, text_dim=None), text_encoder=torch.nn.Identity())


def test_checkpoint_holds_trainables_not_the_language_model(minilm: PromptedTextEncoder, tmp_path: Path) -> None:
    net = TextGuidedSegmenter(ContextUNet(channels=TINY, text_dim=minilm.width), minilm)
    state = net.state_dict()
    assert "text.prompts" in state and "text.seg" in state
    assert not any(k.startswith("text.lm.") for k in state)
    wrapped = torch.nn.Sequential(net).state_dict()  # as inside DDP: prefixes are respected
    assert not any(".text.lm." in k for k in wrapped)
    torch.save(state, tmp_path / "m.pt")
    fresh = TextGuidedSegmenter(ContextUNet(channels=TINY, text_dim=minilm.width), minilm)
    fresh.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    assert torch.equal(fresh.unet.head.conv.conv.weight, net.unet.head.conv.conv.weight)
    with pytest.raises(RuntimeError, match="mismatch"):
        fresh.load_state_dict({k: v for k, v in state.items() if k != "text.seg"})


@pytest.fixture(scope="module")
def adapted() -> PromptedTextEncoder:
    return PromptedTextEncoder(n_prompts=1, prompt_length=2, lora_rank=2)


def test_student_route_starts_frozen_and_zero_and_never_touches_a_table5_note(adapted: PromptedTextEncoder) -> None:
    """The student (LoRA adapters, prompt and [SEG] shifts) starts at zero, leaving the LM's output as it was,
    and frozen (only the distillation trains it); trained, it changes a free-text note's context but never a
    Table 5 note's: the U-Net's own."""
    bare = PromptedTextEncoder(n_prompts=1, prompt_length=2)
    free = ["s/p left lumpectomy, pN1a (2/12 nodes positive)"]
    assert torch.allclose(bare.encode(NOTES), adapted.encode(NOTES), atol=1e-5)
    student = adapted.student_parameters()
    assert {"prompts_delta", "seg_delta"} <= set(student) and any("lora_B" in n for n in student)
    assert not any(p.requires_grad for p in student.values())
    assert not any(p.requires_grad for p in adapted.lm.parameters())
    assert not any("pooler" in n for n in student)  # the pooler is off the read-out's path
    noise = torch.Generator().manual_seed(0)
    for shifted in ({"lora_"}, {"prompts_delta", "seg_delta"}):  # each part of the student alone
        with torch.no_grad():
            for n, p in student.items():
                if "lora_A" not in n and any(s in n for s in shifted):  # not uniform: LayerNorm removes that
                    p.add_(0.05 * torch.randn(p.shape, generator=noise))
        try:
            assert torch.equal(adapted(NOTES), bare(NOTES))  # bit for bit: the U-Net's own contexts
            assert not torch.allclose(adapted(free), bare(free), atol=1e-3)
            assert not any(p.requires_grad for p in student.values())  # switching adapters keeps them frozen
        finally:
            with torch.no_grad():
                for n, p in student.items():
                    if "lora_A" not in n:
                        p.zero_()


def test_checkpoint_holds_the_student_and_never_loads_half_adapted(adapted: PromptedTextEncoder) -> None:
    """An adapted network saves its student (adapters, prompt and [SEG] shifts; not the LM). Weights with no
    student at all load as the plain model (student zeroed); part of a student missing, or a student for a
    bare network, is a mismatch."""
    net = TextGuidedSegmenter(ContextUNet(channels=TINY, text_dim=adapted.width), adapted)
    state = net.state_dict()
    student = [k for k in state if is_student_key(k)]
    assert {"text.prompts_delta", "text.seg_delta"} <= set(student)
    assert all("lora_" in k for k in state if k.startswith("text.lm."))  # the LM itself is not saved
    free = ["s/p left lumpectomy, pN1a (2/12 nodes positive)"]
    plain = PromptedTextEncoder(None, 1, 2).encode(free)
    net.load_state_dict({k: torch.ones_like(v) if k in student and "lora_A" not in k else v for k, v in state.items()})
    assert net.text.encode(free).sub(plain).abs().max() > 1e-3
    net.load_state_dict({k: v for k, v in state.items() if k not in student})
    assert all(not net.state_dict()[k].any() for k in student if "lora_A" not in k)
    assert torch.allclose(net.text.encode(free), plain, atol=1e-5)
    for part in (next(k for k in student if "lora_" in k), "text.prompts_delta"):
        with pytest.raises(RuntimeError, match="mismatch"):
            net.load_state_dict({k: v for k, v in state.items() if k != part})
    bare = TextGuidedSegmenter(ContextUNet(channels=TINY, text_dim=adapted.width), PromptedTextEncoder(None, 1, 2))
    with pytest.raises(RuntimeError, match="mismatch"):
        bare.load_state_dict(state)
