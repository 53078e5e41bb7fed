"""Greedy and beam-search generation for CausalLM, UnifiedLM (seq2seq) and MassSeq2Seq.

Each model gets a *stepper*: ``start() -> logits`` for the first new token, ``step(tokens) ->
logits`` after feeding the chosen tokens, ``reorder(index)`` to follow beams. Two steppers per
model: a cached one (keys/values of the prefix kept in a :class:`KVCache`) and an uncached
one that re-runs the whole prefix each step (the reference the cached one is tested against).

* GPT (CausalLM): left-to-right; token ``t`` at position ``t`` attends to positions ``<= t``.
* UNILM seq2seq (arXiv 1905.03197 sec. 2.3 and its ``decode_seq2seq``): the source is encoded
  bidirectionally; a [MASK] is appended at the next target position and its prediction is the
  next token, which then replaces the [MASK] (its keys/values overwrite the [MASK]'s slot).
* MASS: the encoder runs once; the decoder attends causally over its own tokens and to the
  encoder output (cross-attention keys/values computed once).

Batches are right-padded; prompts/sources may have different lengths (``seq_len``/``src_len``,
or an HF ``attention_mask``, which must then be a right-padding mask: left padding is a
``ValueError``, as in the encoder). ``input_ids`` may be padded wider than needed; lengths
above its width, or not one per row, are a ``ValueError``.
Outputs are the new tokens only, ``[B, T]``: EOS included, ``pad_id`` after it.
"""

from __future__ import annotations

import torch

from ..masks import LEFT_TO_RIGHT, SEQ2SEQ, _check_integers, check_batch_len
from .encoder import resolve_mask_args

__all__ = ["greedy_search", "beam_search", "generate_causal", "generate_unilm", "generate_mass"]


# ---------------------------------------------------------------------------------------------
# search


@torch.no_grad()
def greedy_search(stepper, batch: int, max_new_tokens: int, eos_id: int | None, pad_id: int) -> torch.Tensor:
    """Pick the arg-max token each step; finished rows emit ``pad_id``."""
    logits = stepper.start()
    out = []
    done = torch.zeros(batch, dtype=torch.bool, device=logits.device)
    for t in range(max_new_tokens):
        tok = logits.argmax(-1)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        out.append(tok)
        if eos_id is not None:
            done |= tok == eos_id
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        logits = stepper.step(tok)
    return torch.stack(out, dim=1) if out else torch.zeros(batch, 0, dtype=torch.long)


@torch.no_grad()
def beam_search(stepper, batch: int, beams: int, max_new_tokens: int, eos_id: int | None, pad_id: int,
                length_penalty: float = 1.0) -> torch.Tensor:
    """Beam search over a stepper built for ``batch * beams`` rows (sample-major).

    A hypothesis ending in EOS is scored ``sum log p / len ** length_penalty``; a sample stops
    when it holds ``beams`` finished hypotheses. With ``beams == 1`` this is greedy search.
    """
    logits = stepper.start()
    V = logits.shape[-1]
    dev = logits.device
    scores = torch.full((batch, beams), float("-inf"), device=dev)
    scores[:, 0] = 0.0
    seqs = torch.zeros(batch * beams, 0, dtype=torch.long, device=dev)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    done = [False] * batch
    for t in range(max_new_tokens):
        logp = torch.log_softmax(logits.float(), dim=-1).view(batch, beams, V)
        cand = (scores[:, :, None] + logp).view(batch, beams * V)
        top_s, top_i = cand.topk(2 * beams, dim=1)
        # one host read per step (not one GPU sync per candidate); the beams are chosen on the
        # host and sent back as three small tensors
        top_s_h, top_i_h = top_s.tolist(), top_i.tolist()
        next_beam = [list(range(beams)) if done[b] else [0] * beams for b in range(batch)]
        next_tok = [[pad_id] * beams for _ in range(batch)]
        next_score = [[float("-inf")] * beams for _ in range(batch)]
        for b in range(batch):
            if done[b]:
                continue
            k = 0
            for rank in range(2 * beams):
                s, i = top_s_h[b][rank], top_i_h[b][rank]
                src, tok = divmod(i, V)
                if s == float("-inf"):
                    break
                if eos_id is not None and tok == eos_id:
                    if rank < beams:
                        hyp = seqs[b * beams + src].tolist() + [tok]
                        finished[b].append((s / (len(hyp) ** length_penalty), hyp))
                    continue
                next_beam[b][k], next_tok[b][k], next_score[b][k] = src, tok, s
                k += 1
                if k == beams:
                    break
            if len(finished[b]) >= beams:
                done[b] = True
        next_beam = torch.tensor(next_beam, dtype=torch.long).to(dev)
        next_tok = torch.tensor(next_tok, dtype=torch.long).to(dev)
        scores = torch.tensor(next_score, dtype=torch.float32).to(dev)
        index = (next_beam + torch.arange(batch, device=dev)[:, None] * beams).view(-1)
        seqs = torch.cat([seqs.index_select(0, index), next_tok.view(-1, 1)], dim=1)
        if all(done) or t == max_new_tokens - 1:
            break
        stepper.reorder(index)
        logits = stepper.step(next_tok.view(-1))
    scores_h = scores.tolist()
    for b in range(batch):
        if not done[b]:
            for j in range(beams):
                s = scores_h[b][j]
                if s > float("-inf"):
                    hyp = seqs[b * beams + j].tolist()
                    finished[b].append((s / (len(hyp) ** length_penalty), hyp))
    best = [max(f, key=lambda x: x[0])[1] if f else [] for f in finished]
    T = max((len(h) for h in best), default=0)
    return torch.tensor([h + [pad_id] * (T - len(h)) for h in best], dtype=torch.long, device=dev).view(batch, T)


def _lengths(ids: torch.Tensor, lengths: torch.Tensor | None, attention_mask: torch.Tensor | None,
             name: str = "seq_len") -> torch.Tensor:
    """Per-row prompt/source lengths (int64 ``[B]``) of the right-padded ``ids`` ``[B, L]``:
    ``lengths`` (the argument ``name``), else ``attention_mask.sum(1)``, else ``L``.

    Raises ``ValueError`` naming the value when ``lengths`` has not one entry per row or a
    length exceeds ``L``, and (through the encoder's :func:`resolve_mask_args`) when
    ``attention_mask`` is not a ``[B, L]`` right-padding mask or disagrees with ``lengths``.
    """
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        raise ValueError(f"input_ids must be a [batch, length] tensor, got {getattr(ids, 'shape', type(ids).__name__)}")
    B, L = ids.shape
    if lengths is not None:
        lengths = torch.as_tensor(lengths)
        _check_integers(name, lengths)
        check_batch_len(name, lengths, B, "input_ids has B = {} rows")
        lengths = lengths.to(device=ids.device, dtype=torch.long)
        bad = lengths > L
        if bool(bad.any()):
            b = int(bad.nonzero()[0, 0])
            raise ValueError(f"{name}[{b}] = {int(lengths[b])} exceeds the length of input_ids (L = {L})")
    _, _, seq = resolve_mask_args((B, L), attention_mask, None, None, lengths, ids.device)
    return seq


def _run(model, make_stepper, ids, lengths, max_new_tokens, num_beams, eos_id, pad_id, length_penalty):
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if bool((lengths < 1).any()):
        raise ValueError(f"every prompt/source needs at least one token, got lengths {lengths.tolist()}")
    was = model.training
    model.eval()
    try:
        B = ids.shape[0]
        if num_beams == 1:
            return greedy_search(make_stepper(ids, lengths), B, max_new_tokens, eos_id, pad_id)
        ids = ids.repeat_interleave(num_beams, dim=0)
        lengths = lengths.repeat_interleave(num_beams, dim=0)
        return beam_search(make_stepper(ids, lengths), B, num_beams, max_new_tokens, eos_id, pad_id, length_penalty)
    finally:
        model.train(was)


# ---------------------------------------------------------------------------------------------
# steppers: a prefix of tokens at absolute positions; cached or recomputed


class _PrefixStepper:
    """Shared logic of the GPT and UNILM steppers: one growing right-padded buffer per row.

    Row ``b`` holds ``prefix_len[b]`` prefix tokens then the generated ones; ``cur[b]`` is the
    next free position. UNILM (``mask_id`` set) predicts through a [MASK] at ``cur``.

    Positions: the prompt uses ``0 .. P-1`` (``P = prefix_len[b]``); new token ``k`` (``k <
    max_new``) sits at ``P + k``. GPT predicts it from position ``P + k - 1`` (the last new
    token is never fed back); UNILM predicts it through a [MASK] at ``P + k`` that the token
    then replaces. Either way the buffer needs ``P + max_new`` positions, the sequence the call
    returns, and that must fit in ``max_position_embeddings``.
    """

    def __init__(self, model, ids, prefix_len, max_new, use_cache, mode, type_prefix, type_new, mask_id):
        self.model, self.enc = model, model.encoder
        B = ids.shape[0]
        P = int(prefix_len.max())
        self.T = P + max_new
        if self.T > self.enc.config.max_position_embeddings:
            raise ValueError(
                f"prompt length {P} + {max_new} new tokens exceeds "
                f"max_position_embeddings {self.enc.config.max_position_embeddings}"
            )
        self.buf = torch.zeros(B, self.T, dtype=torch.long, device=ids.device)
        self.buf[:, :P] = ids[:, :P]  # ids may be padded wider than the buffer; only prompts matter
        pos = torch.arange(self.T, device=ids.device)[None]
        self.buf[pos >= prefix_len[:, None]] = 0
        self.types = torch.where(pos < prefix_len[:, None], type_prefix, type_new).long().expand(B, -1).clone()
        self.prefix_len, self.cur = prefix_len.clone(), prefix_len.clone()
        self.mode, self.mask_id, self.use_cache = mode, mask_id, use_cache
        self.cache = self.enc.new_cache(B, self.T) if use_cache else None

    def _rows(self):
        return torch.arange(self.buf.shape[0], device=self.buf.device)

    def _logits_full(self):
        """Uncached: run the whole buffer, read the prediction at cur-1 (GPT) or the [MASK] at cur."""
        B = self.buf.shape[0]
        ids = self.buf.clone()
        if self.mask_id is not None:
            ids[self._rows(), self.cur] = self.mask_id
            seq = self.cur + 1
            at = self.cur
        else:
            seq = self.cur
            at = self.cur - 1
        n = int(seq.max())
        mode = torch.full((B,), self.mode, dtype=torch.long, device=ids.device)
        out = self.enc(ids[:, :n], self.types[:, :n], attn_mode=mode, src_len=self.prefix_len, seq_len=seq)
        return self.model.lm_logits(out.last_hidden_state[self._rows(), at])

    def start(self):
        if not self.use_cache:
            return self._logits_full()
        B = self.buf.shape[0]
        n = int(self.prefix_len.max())
        mode = torch.full((B,), self.mode, dtype=torch.long, device=self.buf.device)
        # prefill: GPT prompts are left-to-right, UNILM sources bidirectional (seq2seq, src_len=seq_len)
        out = self.enc(self.buf[:, :n], self.types[:, :n], attn_mode=mode, src_len=self.prefix_len,
                       seq_len=self.prefix_len, cache=self.cache)
        if self.mask_id is None:
            return self.model.lm_logits(out.last_hidden_state[self._rows(), self.cur - 1])
        return self._step_cached(None)

    def _step_cached(self, tok):
        rows = self._rows()
        if self.mask_id is None:
            ids, pos = tok[:, None], (self.cur - 1)[:, None]
        elif tok is None:
            ids, pos = torch.full_like(self.cur, self.mask_id)[:, None], self.cur[:, None]
        else:
            ids = torch.stack([tok, torch.full_like(tok, self.mask_id)], 1)
            pos = torch.stack([self.cur - 1, self.cur], 1)
        types = self.types[rows[:, None], pos]
        h = self.enc(ids, types, cache=self.cache, cache_positions=pos).last_hidden_state
        return self.model.lm_logits(h[:, -1])

    def step(self, tok):
        rows = self._rows()
        self.buf[rows, self.cur] = tok
        self.cur = self.cur + 1
        if self.use_cache:
            return self._step_cached(tok)
        return self._logits_full()

    def reorder(self, index):
        self.buf, self.types = self.buf.index_select(0, index), self.types.index_select(0, index)
        self.prefix_len, self.cur = self.prefix_len.index_select(0, index), self.cur.index_select(0, index)
        if self.cache is not None:
            self.cache.reorder(index)


def generate_causal(model, input_ids: torch.Tensor, seq_len: torch.Tensor | None = None,
                    attention_mask: torch.Tensor | None = None, max_new_tokens: int = 20, num_beams: int = 1,
                    eos_id: int | None = None, pad_id: int = 0, use_cache: bool = True,
                    length_penalty: float = 1.0) -> torch.Tensor:
    """Continue right-padded prompts with a :class:`CausalLM` (greedy or beam search)."""
    lengths = _lengths(input_ids, seq_len, attention_mask)

    def make(ids, lens):
        return _PrefixStepper(model, ids, lens, max_new_tokens, use_cache, LEFT_TO_RIGHT, 0, 0, None)

    return _run(model, make, input_ids, lengths, max_new_tokens, num_beams, eos_id, pad_id, length_penalty)


def generate_unilm(model, input_ids: torch.Tensor, src_len: torch.Tensor | None = None,
                   attention_mask: torch.Tensor | None = None, max_new_tokens: int = 20, num_beams: int = 1,
                   eos_id: int | None = None, pad_id: int = 0, mask_id: int = 103, use_cache: bool = True,
                   source_type: int = 4, target_type: int = 5, length_penalty: float = 1.0) -> torch.Tensor:
    """Seq2seq decoding with a :class:`UnifiedLM`: the source (``[CLS] src [SEP]``, right
    padded, lengths ``src_len``) is read bidirectionally, the target is generated left to
    right through a trailing [MASK] (``mask_id``); segment ids 4/5 as in UNILM training
    (use 0/1 for a model that only knows BERT's two segments)."""
    lengths = _lengths(input_ids, src_len, attention_mask, "src_len")

    def make(ids, lens):
        return _PrefixStepper(model, ids, lens, max_new_tokens, use_cache, SEQ2SEQ, source_type, target_type, mask_id)

    return _run(model, make, input_ids, lengths, max_new_tokens, num_beams, eos_id, pad_id, length_penalty)


class _MassStepper:
    def __init__(self, model, ids, src_len, max_new, use_cache, start_id, start_pos):
        self.model = model
        B = ids.shape[0]
        self.memory = model.encode(ids, seq_len=src_len)
        self.T = max_new
        self.dec = torch.full((B, 1), start_id, dtype=torch.long, device=ids.device)
        self.start_pos = start_pos.to(ids.device).long().expand(B).clone()
        if int(self.start_pos.max()) + max_new > model.config.max_position_embeddings:
            raise ValueError("decoder start position + max_new_tokens exceeds max_position_embeddings")
        self.cache = model.new_cache(B, max_new) if use_cache else None

    def _positions(self, n):
        return self.start_pos[:, None] + torch.arange(n, device=self.dec.device)[None]

    def _logits(self):
        n = self.dec.shape[1]
        if self.cache is None:
            h = self.model.decode(self.memory, self.dec, self._positions(n))
        else:
            slots = torch.full((self.dec.shape[0], 1), n - 1, dtype=torch.long, device=self.dec.device)
            h = self.model.decode(self.memory, self.dec[:, -1:], self._positions(n)[:, -1:], cache=self.cache, slots=slots)
        return self.model.lm_logits(h[:, -1])

    def start(self):
        return self._logits()

    def step(self, tok):
        self.dec = torch.cat([self.dec, tok[:, None]], dim=1)
        return self._logits()

    def reorder(self, index):
        self.dec, self.start_pos = self.dec.index_select(0, index), self.start_pos.index_select(0, index)
        self.memory.reorder(index)
        if self.cache is not None:
            self.cache.reorder(index)


def generate_mass(model, input_ids: torch.Tensor, seq_len: torch.Tensor | None = None,
                  attention_mask: torch.Tensor | None = None, max_new_tokens: int = 20, num_beams: int = 1,
                  eos_id: int | None = None, pad_id: int = 0, decoder_start_id: int = 103,
                  decoder_start_position: int | torch.Tensor = 0, use_cache: bool = True,
                  length_penalty: float = 1.0) -> torch.Tensor:
    """Decode from right-padded sources with a :class:`MassSeq2Seq`. The decoder starts from
    ``decoder_start_id`` ([MASK] in unimask's MASS pretraining) at ``decoder_start_position``."""
    lengths = _lengths(input_ids, seq_len, attention_mask)
    start_pos = torch.as_tensor(decoder_start_position)

    def make(ids, lens):
        sp = start_pos if start_pos.dim() == 0 else start_pos.to(ids.device).repeat_interleave(ids.shape[0] // start_pos.shape[0])
        return _MassStepper(model, ids, lens, max_new_tokens, use_cache, decoder_start_id, sp)

    return _run(model, make, input_ids, lengths, max_new_tokens, num_beams, eos_id, pad_id, length_penalty)
