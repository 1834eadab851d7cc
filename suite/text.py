"""Prompt encoding shared by sampling, capture of ``E`` and ``F_T`` optimisation (one copy)."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def encode_prompts(tokenizer, text_encoder, prompts: list[str], device=None, dtype=None,
                   clip_skip: int | None = None) -> torch.Tensor:
    """CLIP text features ``F_T`` (``[N, 77, D]``, the text encoder's last hidden state), as SD1.5 uses them.

    Prompts longer than the tokenizer's 77 tokens are truncated with a warning naming the dropped text
    (diffusers does the same). ``clip_skip`` (diffusers' meaning): take the hidden state that many layers before
    the last, through the final layer norm.
    """
    max_len = tokenizer.model_max_length
    ids = tokenizer(prompts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt").input_ids
    for prompt in prompts:
        full = tokenizer(prompt).input_ids
        if len(full) > max_len:
            dropped = tokenizer.decode(full[max_len - 1 : -1])
            log.warning("prompt is longer than %d tokens and was truncated; dropped: %r", max_len, dropped)
    device = device if device is not None else text_encoder.device
    with torch.no_grad():
        if clip_skip:
            hidden = text_encoder(ids.to(device), output_hidden_states=True).hidden_states[-(clip_skip + 1)]
            model = getattr(text_encoder, "text_model", text_encoder)  # transformers 4 nests it; 5 does not
            feats = model.final_layer_norm(hidden)
        else:
            feats = text_encoder(ids.to(device))[0]
    return feats.to(dtype) if dtype is not None else feats
