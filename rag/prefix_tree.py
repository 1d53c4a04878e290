"""Decoder states of many hypotheses, computed once per distinct prefix (tree attention).

RAG-Sequence thorough decoding scores every beam hypothesis of a question under each of its K
passages (``rag.rescore``). The hypotheses come from beam searches and share long prefixes, and
a decoder state depends only on the prefix that leads to it, so the distinct prefixes of a
question's hypotheses form a tree (a trie of token sequences) whose nodes are all the decoder
positions there are to compute. Here every node is computed once per passage:

- the nodes of a question are laid out in one row per passage, depth-major (a parent before its
  children), each at the position embedding of its depth;
- each node attends to its ancestors and itself alone: the tree mask of tree attention as
  speculative decoding uses it (SpecInfer, Miao et al. 2024; Medusa, Cai et al. 2024);
- every row cross-attends to its own passage, whose keys and values are computed once (B*K
  rows) and reused by later passes.

A question whose tree is larger than ``_TREE_TOKENS`` nodes is split into groups of hypotheses,
one group per pass, each bounded to ``_TREE_TOKENS`` positions (prefixes shared across groups
are then computed once per group).

Glossary: B questions, K passages per question, L context length, D hidden size, M hypotheses,
T1 positions per hypothesis, G hypotheses per group, U tree nodes, S node slots per row.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import DynamicCache, EncoderDecoderCache, PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

_TREE_TOKENS = 256  # node slots per decoder row: a pass's self-attention is S x S per row


def prefix_owner(inputs: Tensor, group: Tensor) -> Tensor:
    """(M, T1) int64: for each hypothesis and position t, the first hypothesis of the same
    ``group`` (M,) whose ``inputs`` (M, T1) agree with it on positions 0..t. Positions with the
    same owner share one prefix, hence one decoder state (one tree node)."""
    same = (inputs[:, None, :] == inputs[None, :, :]).int().cumprod(dim=2).bool()  # (M, M, T1)
    same &= (group[:, None] == group[None, :])[:, :, None]
    return same.int().argmax(dim=1)  # first True: argmax returns the first maximum


def passage_cross_cache(generator: PreTrainedModel, encoder_states: Tensor,
                        attention_mask: Tensor | None) -> DynamicCache:
    """The decoder's cross-attention keys and values of every passage, (B*K) rows per layer:
    one decoder step on the start symbol computes them, as any first step does.

    Args:
        encoder_states: (B, K, L, D); attention_mask: (B, K, L) or None.
    """
    B, K, L, D = encoder_states.shape
    start = generator.config.decoder_start_token_id
    first = generator.get_decoder()(
        input_ids=torch.full((B * K, 1), start, dtype=torch.long, device=encoder_states.device),
        encoder_hidden_states=encoder_states.reshape(B * K, L, D),  # transformers boundary
        encoder_attention_mask=None if attention_mask is None else attention_mask.reshape(B * K, L),
        use_cache=True,
    )
    return first.cache.cross_attention_cache


def tree_decoder_states(generator: PreTrainedModel, encoder_states: Tensor,
                        context_attention_mask: Tensor, inputs: Tensor, q_idx: Tensor,
                        alive: Tensor, cross: DynamicCache | None = None,
                        owner: Tensor | None = None) -> Tensor:
    """Teacher-forced decoder states of ``inputs`` under each passage of their question.

    Args:
        generator: a BART-family seq2seq LM.
        encoder_states: (B, K, L, D) from :func:`rag.passages.encode_passages`.
        context_attention_mask: (B, K, L).
        inputs: (M, T1) int64 decoder inputs, the start symbol first.
        q_idx: (M,) int64, each hypothesis's question, in increasing order.
        alive: (M, T1) bool, the positions whose states are wanted, a prefix of each row.
        cross: the passages' cross-attention cache (:func:`passage_cross_cache` with the same
            states and mask), if made already; else the first pass makes it.
        owner: ``prefix_owner(inputs, q_idx)``, if the caller has it already.

    Returns:
        (M, K, T1, D) float: the state at every position that shares its prefix with a wanted
        one (every alive position included), zeros elsewhere.
    """
    B, K, L, D = encoder_states.shape
    M, T1 = inputs.shape
    tree = _Tree.plan(inputs, q_idx, alive, B, owner)
    # transformers boundary: passages flattened to (B*K, ...)
    flat_enc = encoder_states.reshape(B * K, L, D)
    flat_mask = context_attention_mask.reshape(B * K, L)
    if cross is None:  # the passages' keys and values, computed by the first pass
        cross = DynamicCache(config=generator.config)
    hidden = encoder_states.new_zeros(M, K, T1, D)
    pad = generator.config.pad_token_id
    for g in range(tree.groups):
        ids, positions, ancestors = tree.rows(g, pad)  # (B, S), (B, S), (B, S, S)
        states = _decoder_pass(
            generator.get_decoder(), ids.repeat_interleave(K, 0),
            positions.repeat_interleave(K, 0), ancestors, K, flat_enc, flat_mask,
            EncoderDecoderCache(DynamicCache(config=generator.config), cross),
        ).view(B, K, -1, D)  # (B, K, S, D)
        m_idx, t_idx = (tree.valid & (tree.group_of[:, None] == g)).nonzero(as_tuple=True)
        hidden[m_idx, :, t_idx] = states[q_idx[m_idx], :, tree.slot[m_idx, t_idx]]  # (n, K, D)
    return hidden


class _Tree:
    """Where each tree node sits: its group (pass), its slot in the row, its token and depth."""

    def __init__(self, inputs: Tensor, q_idx: Tensor, alive: Tensor, B: int, per_group: int,
                 owner: Tensor | None = None):
        M, T1 = inputs.shape
        rank = _rank_in_question(q_idx, B)  # (M,)
        self.groups = int(rank.max()) // per_group + 1 if M else 0
        self.group_of = rank // per_group  # (M,) the pass of each hypothesis
        if owner is None or self.groups > 1:  # groups share no nodes: owners within the group
            owner = prefix_owner(inputs, q_idx * self.groups + self.group_of)  # (M, T1)
        needed = torch.zeros(M, T1, device=inputs.device).scatter_add_(0, owner, alive.float()) > 0
        node_m, node_t = needed.nonzero(as_tuple=True)  # (U,) each node by its owner
        key = (q_idx[node_m] * self.groups + self.group_of[node_m]) * T1 + node_t
        order = torch.argsort(key * M + node_m)  # by (question, group, depth): parents first
        node_m, node_t, key = node_m[order], node_t[order], key[order] // T1
        counts = torch.bincount(key, minlength=B * self.groups)  # (B * groups,) nodes per row
        node_slot = torch.arange(len(key), device=key.device) - (counts.cumsum(0) - counts)[key]
        slot_of_owner = torch.full((M, T1), -1, dtype=torch.long, device=inputs.device)
        slot_of_owner[node_m, node_t] = node_slot
        t = torch.arange(T1, device=inputs.device)
        self.slot = slot_of_owner[owner, t]  # (M, T1) the node each position reads
        self.valid = self.slot >= 0
        self.width = max(int(counts.max()) if len(counts) else 1, 1)  # S
        self.inputs, self.q_idx, self.B = inputs, q_idx, B
        self.node_m, self.node_t, self.node_slot = node_m, node_t, node_slot

    @classmethod
    def plan(cls, inputs: Tensor, q_idx: Tensor, alive: Tensor, B: int,
             owner: Tensor | None = None) -> _Tree:
        """One group per question if every tree fits ``_TREE_TOKENS`` slots, else groups of
        hypotheses small enough that any tree of theirs does (``owner``: by question, if known)."""
        whole = cls(inputs, q_idx, alive, B, per_group=len(inputs) or 1, owner=owner)
        if whole.width <= _TREE_TOKENS:
            return whole
        return cls(inputs, q_idx, alive, B, per_group=max(1, _TREE_TOKENS // inputs.shape[1]))

    def rows(self, g: int, pad: int) -> tuple[Tensor, Tensor, Tensor]:
        """Group ``g``'s row of every question: token ids (B, S), depths (B, S) and the tree mask
        (B, S, S), True where a node (row) may attend to a node (column): its ancestors and
        itself; unused slots hold padding that attends to itself."""
        B, S, device = self.B, self.width, self.inputs.device
        ids = torch.full((B, S), pad, dtype=torch.long, device=device)
        depth = torch.zeros(B, S, dtype=torch.long, device=device)
        mine = self.group_of[self.node_m] == g  # (U,)
        m, t, s = self.node_m[mine], self.node_t[mine], self.node_slot[mine]
        b = self.q_idx[m]
        ids[b, s] = self.inputs[m, t]
        depth[b, s] = t
        ancestors = torch.eye(S, dtype=torch.bool, device=device).repeat(B, 1, 1)  # (B, S, S)
        # node (m, t) reads the node of each earlier position t' <= t of its own owner path
        upto = torch.arange(self.slot.shape[1], device=device)[None, :] <= t[:, None]  # (u, T1)
        u_idx, t_up = upto.nonzero(as_tuple=True)
        ancestors[b[u_idx], s[u_idx], self.slot[m[u_idx], t_up]] = True
        return ids, depth, ancestors


def _rank_in_question(q_idx: Tensor, B: int) -> Tensor:
    """(M,) each hypothesis's place among its question's, for ``q_idx`` in increasing order."""
    counts = torch.bincount(q_idx, minlength=B)  # (B,)
    first = torch.cumsum(counts, 0) - counts  # (B,)
    return torch.arange(len(q_idx), device=q_idx.device) - first[q_idx]


def _decoder_pass(decoder, ids: Tensor, positions: Tensor, ancestors: Tensor, K: int,
                  encoder_states: Tensor, encoder_mask: Tensor, cache: EncoderDecoderCache
                  ) -> Tensor:
    """The decoder's last hidden states (R, S, D) of rows ``ids`` (R, S) whose tokens sit at
    ``positions`` (R, S) and attend where ``ancestors`` (R/K, S, S) allows (row r uses r // K).

    The decoder's own forward numbers positions 0..S-1 and masks causally, so its parts run here:
    the embeddings, the masks (transformers' ``create_causal_mask`` with the tree as an extra
    condition, built for whichever attention implementation the model uses) and each decoder
    layer as transformers wrote it."""
    embeds = decoder.embed_tokens(ids)  # (R, S, D)
    R, S = ids.shape
    place = decoder.embed_positions(ids, 0, position_ids=positions.reshape(-1))  # (1, R*S, D)
    hidden = embeds + place.view(R, S, -1).to(embeds)
    if getattr(decoder, "layernorm_embedding", None) is not None:
        hidden = decoder.layernorm_embedding(hidden)

    def in_tree(batch_idx, head_idx, q_idx, kv_idx):
        return ancestors[batch_idx // K, q_idx, kv_idx]

    self_mask = create_causal_mask(config=decoder.config, inputs_embeds=hidden,
                                   attention_mask=None, cache=None, and_mask_function=in_tree)
    cross_mask = create_bidirectional_mask(config=decoder.config, inputs_embeds=hidden,
                                           attention_mask=encoder_mask,
                                           encoder_hidden_states=encoder_states)
    for layer in decoder.layers:
        hidden = layer(hidden, self_mask, encoder_states, encoder_attention_mask=cross_mask,
                       cache=cache, use_cache=True)
    if getattr(decoder, "layer_norm", None) is not None:  # mBART-style final norm
        hidden = decoder.layer_norm(hidden)
    return hidden
