"""Code paths that CI (CPU only) would otherwise never run: what a CUDA machine takes by default
(autocast inference, models on another device than their inputs, the ``auto`` precision choice),
each forced on the CPU."""

from __future__ import annotations

import torch

from unimask.masks import LEFT_TO_RIGHT
from unimask.models import CausalLM, EncoderConfig, MassSeq2Seq

V, MASK = 60, 3


def _cfg() -> EncoderConfig:
    return EncoderConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=48, type_vocab_size=6)


@torch.no_grad()
def test_kv_cache_decoding_under_bf16_autocast_matches_fp32():
    """Incremental decoding under autocast (how bf16/fp16 inference runs on a GPU): the new
    token's keys/values come out of the projection in bf16 while the cache holds fp32; the step
    must write them (``scatter_`` does not cast) and give the hidden state of a full fp32
    forward, to bf16 accuracy."""
    torch.manual_seed(0)
    model = CausalLM(_cfg()).eval()
    enc = model.encoder
    ids = torch.randint(4, V, (2, 7))
    B, L = ids.shape
    mode = torch.full((B,), LEFT_TO_RIGHT)
    full = enc(ids, attn_mode=mode).last_hidden_state  # fp32 oracle
    cache = enc.new_cache(B, L)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        enc(ids[:, :-1], attn_mode=mode, seq_len=torch.full((B,), L - 1), cache=cache)  # prefill
        step = enc(ids[:, -1:], cache=cache, cache_positions=torch.full((B, 1), L - 1)).last_hidden_state
    assert cache.k[0].dtype == torch.float32
    torch.testing.assert_close(step[:, 0].float(), full[:, -1], atol=1e-2, rtol=0)
    # and the tokens generated with the cache under autocast are well formed
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.generate(ids, max_new_tokens=4, use_cache=True)
        beams = model.generate(ids, max_new_tokens=4, use_cache=True, num_beams=2)
    assert out.shape == beams.shape == (B, 4)


@torch.no_grad()
def test_mass_cached_decoder_step_under_bf16_autocast_matches_fp32():
    torch.manual_seed(0)
    model = MassSeq2Seq(_cfg(), num_decoder_layers=2).eval()
    src = torch.randint(4, V, (2, 6))
    dec = torch.randint(4, V, (2, 4))
    pos = torch.arange(4)[None].expand(2, 4)
    mem = model.encode(src)
    full = model.decode(mem, dec, pos)  # fp32, no cache
    cache = model.new_cache(2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mem16 = model.encode(src)
        for t in range(4):
            h = model.decode(mem16, dec[:, t:t + 1], pos[:, t:t + 1], cache=cache, slots=torch.full((2, 1), t))
    torch.testing.assert_close(h[:, 0].float(), full[:, -1], atol=1e-2, rtol=0)
