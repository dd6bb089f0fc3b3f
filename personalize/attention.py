"""Attention processors that record attention maps at one resolution, only while asked to.

    recorder = AttentionRecorder(pipe.unet)            # the coarsest down/up-block resolution (SD1.x: 16x16)
    with recorder.recording() as store:                # explicit softmax only inside this block
        pipe.unet(latents, t, encoder_hidden_states=embeds)
    cross = store.aggregate("cross", latents.shape[-2:])   # (B, 16, 16, 77), mean over layers and heads
    recorder.remove()                                  # the previous processors are back

Only the layers at the chosen resolution get a `RecordingProcessor`; every other layer keeps whatever it had
(diffusers' SDPA `AttnProcessor2_0` by default), and outside `recording()` the recording layers call their
previous processor too, so the UNet computes exactly what it did. The maps keep their autograd graph (SuppressEOT's
ITO differentiates through them). The official SuppressEOT/Prompt-to-Prompt controller patches every `Attention`
forward and hard-codes SD1.x's 16x16 layers; here layers are chosen by name and the resolution is derived from the
UNet config, so tiny test UNets and other sizes work.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import torch

from personalize.errors import PersonalizeError

_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.|^mid_block\.")


def layer_factors(unet) -> dict[str, int]:
    """Every `Attention` module of a UNet2DConditionModel -> its downsampling factor from the latent
    (down_blocks.i: 2^i, up_blocks.i: 2^(n-1-i), mid_block: 2^(n-1), n = number of down blocks)."""
    from diffusers.models.attention_processor import Attention

    n = len(unet.config.down_block_types)
    out = {}
    for name, module in unet.named_modules():
        if not isinstance(module, Attention):
            continue
        m = _BLOCK.match(name)
        if m is None:
            continue
        if m.group(1) is None:
            level = n - 1
        else:
            i = int(m.group(2))
            level = i if m.group(1) == "down_blocks" else n - 1 - i
        out[name] = 2**level
    return out


def default_factor(unet) -> int:
    """The coarsest factor that a down or up block has attention at: 4 for SD1.x/2.x (64 -> 16x16, the layers the
    official SuppressEOT averages), 2 for the toy world (8 -> 4x4)."""
    factors = [f for name, f in layer_factors(unet).items() if not name.startswith("mid_block")]
    if not factors:
        raise PersonalizeError("this UNet has no attention layers in its down/up blocks to record")
    return max(factors)


class AttentionStore:
    """Head-averaged attention probabilities of the recording layers from the passes run while `active`."""

    def __init__(self):
        self.active = False
        self.maps: dict[str, list[torch.Tensor]] = {"cross": [], "self": []}

    def reset(self) -> None:
        self.maps = {"cross": [], "self": []}

    def add(self, kind: str, probs: torch.Tensor, heads: int) -> None:
        b = probs.shape[0] // heads
        self.maps[kind].append(probs.reshape(b, heads, *probs.shape[1:]).mean(1))  # (B, HW, L)

    def aggregate(self, kind: str, size: tuple[int, int]) -> torch.Tensor:
        """Mean over the recorded layers: cross (B, h, w, L_text), self (B, h, w, h*w) for maps of `size`."""
        maps = self.maps[kind]
        if not maps:
            raise PersonalizeError(f"no {kind}-attention maps were recorded (was the UNet run inside recording()?)")
        h, w = size
        mean = torch.stack(maps).mean(0)  # (B, HW, L)
        return mean.reshape(mean.shape[0], h, w, mean.shape[-1])


class RecordingProcessor:
    """Attention with an explicit softmax (diffusers `AttnProcessor` maths) whose probabilities go to `store`;
    when the store is not active it hands the call to the processor it replaced."""

    def __init__(self, store: AttentionStore, previous):
        self.store = store
        self.previous = previous

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        if not self.store.active:
            return self.previous(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        shape4 = hidden_states.shape if hidden_states.ndim == 4 else None
        if shape4 is not None:
            hidden_states = hidden_states.flatten(2).transpose(1, 2)  # (B, HW, C)
        cross = encoder_hidden_states is not None
        context = encoder_hidden_states if cross else hidden_states
        batch, length, _ = context.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, length, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        if cross and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, attention_mask)  # (B * heads, HW, L)
        self.store.add("cross" if cross else "self", probs, attn.heads)
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        if shape4 is not None:
            out = out.transpose(-1, -2).reshape(shape4)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class AttentionRecorder:
    """Installs `RecordingProcessor`s on the attention layers at latent / `factor` (attn1 and attn2)."""

    def __init__(self, unet, factor: int | None = None, kinds: tuple[str, ...] = ("cross", "self")):
        self.unet = unet
        self.factor = factor or default_factor(unet)
        self.store = AttentionStore()
        self._previous: dict[str, object] = {}
        factors = layer_factors(unet)
        if self.factor not in factors.values():
            raise PersonalizeError(f"no attention layer at latent/{self.factor}; this UNet has latent/"
                                   f"{sorted(set(factors.values()))}")
        for name, f in factors.items():
            module = unet.get_submodule(name)
            kind = "cross" if module.is_cross_attention else "self"
            if f == self.factor and kind in kinds:
                self._previous[name] = module.processor
                module.set_processor(RecordingProcessor(self.store, module.processor))

    @property
    def layers(self) -> list[str]:
        return list(self._previous)

    def size(self, latent_hw) -> tuple[int, int]:
        h, w = latent_hw
        return h // self.factor, w // self.factor

    @contextmanager
    def recording(self):
        """Record the passes run inside the block; the store starts empty and is switched off after."""
        self.store.reset()
        self.store.active = True
        try:
            yield self.store
        finally:
            self.store.active = False

    def remove(self) -> None:
        for name, previous in self._previous.items():
            self.unet.get_submodule(name).set_processor(previous)
        self._previous = {}
        self.store.reset()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
