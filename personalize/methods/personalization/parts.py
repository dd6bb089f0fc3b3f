"""The trainable parts the personalization bases are made of, each with its export to an artifact.

  - token rows: new placeholder tokens whose embedding rows train while every other row stays fixed
    (textual inversion, Gal et al. 2022 sec. 3; Custom Diffusion's modifier token);
  - Custom Diffusion K/V: stock diffusers `CustomDiffusionAttnProcessor2_0` on every cross-attention (attn2),
    initialised from `to_k`/`to_v` (Kumari et al. 2023 sec. 3.1; diffusers `train_custom_diffusion.py`);
    exported as a weight delta of `attn2.to_k/to_v(.to_q/.to_out.0)`, which computes the same attention at
    inference (the processor's detach of the start token only changes gradients);
  - LoRA: peft adapters on the UNet attention projections (Hu et al. 2021; diffusers
    `train_dreambooth_lora.py`), exported in kohya's layout, which AUTOMATIC1111, ComfyUI, kohya's tools and
    diffusers' `load_lora_weights` all read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from personalize import kohya
from personalize.methods.base import MethodError
from personalize.tokens import add_tokens, token_names

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- token rows


@dataclass
class TokenRows:
    """Trainable rows for new triggers, held in a small parameter of their own.

    The embedding table stays frozen; a forward hook on it substitutes the new tokens' rows from
    `personalize_rows` (n_new, width). Gradient and optimizer state cover only those rows, not the whole
    49,408-row table diffusers' textual_inversion.py optimises (and restores after each step). `fold` writes
    the learned rows back into the table and removes the hook when training ends."""

    triggers: dict[str, list[int]]  # trigger -> token ids (n_vectors of them)
    handle: object = None
    folded: torch.Tensor | None = None  # the float32 rows after `fold` (the table may be float16)

    @property
    def ids(self) -> list[int]:
        return [i for ids in self.triggers.values() for i in ids]

    @classmethod
    def add(cls, tokenizer, text_encoder, specs: list[tuple[str, str, int]]) -> "TokenRows":
        """specs: (trigger, initializer word, n_vectors). Each new row starts as the initializer's row."""
        table = text_encoder.get_input_embeddings().weight
        triggers = {}
        for trigger, initializer, n in specs:
            init_ids = tokenizer.encode(initializer, add_special_tokens=False)
            if len(init_ids) != 1:
                raise MethodError(
                    f"initializer_token {initializer!r} is {len(init_ids)} tokens for this tokenizer; "
                    "expected a word that is a single token (e.g. 'dog', 'toy', 'object')"
                )
            vectors = table[init_ids[0]].detach().float().repeat(n, 1)  # (n, width)
            triggers[trigger] = add_tokens(tokenizer, text_encoder, trigger, vectors)
        return cls(triggers)

    def make_trainable(self, text_encoder) -> torch.nn.Parameter:
        emb = text_encoder.get_input_embeddings()
        ids = self.ids
        if ids != list(range(ids[0], ids[0] + len(ids))):
            raise MethodError(f"new token ids {ids} are not contiguous; cannot train them as one block")
        first, n = ids[0], len(ids)
        emb.register_parameter("personalize_rows", torch.nn.Parameter(emb.weight[ids].detach().float().clone()))

        def substitute(module, inputs, output):  # output: (B, L, width)
            token_ids = inputs[0]
            new = (token_ids >= first) & (token_ids < first + n)  # (B, L)
            rows = module.personalize_rows[(token_ids - first).clamp(0, n - 1)].to(output.dtype)
            return torch.where(new[..., None], rows, output)

        self.handle = emb.register_forward_hook(substitute)
        return emb.personalize_rows

    def _rows(self, text_encoder) -> torch.Tensor:
        emb = text_encoder.get_input_embeddings()
        if hasattr(emb, "personalize_rows"):
            return emb.personalize_rows
        return self.folded if self.folded is not None else emb.weight[self.ids]

    def vectors(self, text_encoder) -> dict[str, torch.Tensor]:
        rows, out, k = self._rows(text_encoder).detach().float().cpu(), {}, 0
        for trigger, ids in self.triggers.items():
            out[trigger] = rows[k:k + len(ids)].clone()  # (n_vectors, width)
            k += len(ids)
        return out

    def fold(self, text_encoder) -> None:
        """Write the learned rows into the table and remove the hook and the extra parameter."""
        emb = text_encoder.get_input_embeddings()
        if self.handle is None:
            return
        self.folded = emb.personalize_rows.detach().float().clone()
        with torch.no_grad():
            emb.weight[self.ids] = self.folded.to(emb.weight.dtype)
        self.handle.remove()
        del emb.personalize_rows
        self.handle = None

    def expand(self, caption: str) -> str:
        """'a sks dog' -> 'a sks sks_1 sks_2 dog' for multi-vector triggers, as diffusers' maybe_convert_prompt."""
        import re

        for trigger, ids in self.triggers.items():
            if len(ids) > 1:
                caption = re.sub(rf"(?<![\w.-]){re.escape(trigger)}(?![\w.-])",
                                 " ".join(token_names(trigger, len(ids))), caption)
        return caption


# ------------------------------------------------------------------------------------------- Custom Diffusion


def cross_attention_layers(unet) -> dict[str, torch.nn.Module]:
    """name -> Attention module for every cross-attention (attn2) of the UNet."""
    return {name[: -len(".processor")]: unet.get_submodule(name[: -len(".processor")])
            for name in unet.attn_processors if name.endswith("attn2.processor")}


def add_custom_diffusion(unet, train_q_out: bool, xformers: bool = False) -> dict[str, torch.nn.Module]:
    """Install trainable Custom Diffusion processors on attn2 (K/V, plus Q/out for `crossattn`); returns them.
    They are set with `set_attn_processor` directly (diffusers' `load_attn_procs` may silently load nothing for
    these processors)."""
    from diffusers.models import attention_processor as ap

    cls = ap.CustomDiffusionXFormersAttnProcessor if xformers else ap.CustomDiffusionAttnProcessor2_0
    layers = cross_attention_layers(unet)
    procs = dict(unet.attn_processors)
    new = {}
    for path, attn in layers.items():
        proc = cls(train_kv=True, train_q_out=train_q_out, hidden_size=attn.to_k.out_features,
                   cross_attention_dim=attn.to_k.in_features, out_bias=attn.to_out[0].bias is not None)
        with torch.no_grad():
            proc.to_k_custom_diffusion.weight.copy_(attn.to_k.weight)
            proc.to_v_custom_diffusion.weight.copy_(attn.to_v.weight)
            if train_q_out:
                proc.to_q_custom_diffusion.weight.copy_(attn.to_q.weight)
                proc.to_out_custom_diffusion[0].load_state_dict(attn.to_out[0].state_dict())
        proc.to(device=attn.to_k.weight.device, dtype=torch.float32)
        procs[f"{path}.processor"] = new[path] = proc
    unet.set_attn_processor(procs)
    return new


CD_EXPORT = {  # processor parameter -> Attention parameter it replaces
    "to_k_custom_diffusion.weight": "to_k.weight", "to_v_custom_diffusion.weight": "to_v.weight",
    "to_q_custom_diffusion.weight": "to_q.weight", "to_out_custom_diffusion.0.weight": "to_out.0.weight",
    "to_out_custom_diffusion.0.bias": "to_out.0.bias",
}


def custom_diffusion_delta(procs: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Processor weights as a delta of the UNet's own attn2 parameters: `unet.<path>.to_k.weight`, ..."""
    delta = {}
    for path, proc in procs.items():
        for name, value in proc.state_dict().items():
            delta[f"unet.{path}.{CD_EXPORT[name]}"] = value.detach().float().cpu().clone()
    return delta


# ------------------------------------------------------------------------------------------- LoRA


def add_lora(unet, rank: int, alpha: float, targets: list[str]) -> list[torch.nn.Parameter]:
    from peft import LoraConfig

    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=targets))
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    if not params:
        raise MethodError(f"lora target_modules {targets} match no module of this UNet (expected e.g. to_k, to_v)")
    outside = outside_kohya(lora_modules(unet))
    if outside:
        logger.warning("lora target_modules reach %d layers kohya's loader has no module for (e.g. %s): the "
                       "artifact is written in the diffusers layout, which AUTOMATIC1111, ComfyUI and kohya ignore",
                       len(outside), outside[0])
    for p in params:
        p.data = p.data.float()  # trainable LoRA weights stay float32 under mixed precision
    return params


def outside_kohya(modules: list[str]) -> list[str]:
    """The UNet module paths kohya's layout has no module for (personalize.kohya.kohya_name)."""
    return [m for m in modules if kohya.kohya_name(f"unet.{m}") is None]


def lora_modules(unet) -> list[str]:
    """The module paths that carry a peft LoRA adapter."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [name for name, m in unet.named_modules() if isinstance(m, BaseTunerLayer)]


def lora_state_dict(unet, rank: int, alpha: float) -> dict[str, torch.Tensor]:
    """The adapters in kohya's layout (`lora_unet_<path>.lora_down/lora_up.weight`, `.alpha`; personalize.kohya),
    which AUTOMATIC1111, ComfyUI, kohya's tools and diffusers' `load_lora_weights` read. Where an adapter sits on
    a layer kohya has no module for, the diffusers layout instead (`unet.<module>.lora.down/up.weight`, as
    `save_lora_weights` writes it, the scale alpha/rank folded into `up`), which diffusers alone reads."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    peft_sd = {k: v.detach().float().cpu().clone() for k, v in get_peft_model_state_dict(unet).items()}
    modules = lora_modules(unet)
    if not outside_kohya(modules):
        return kohya.state_dict({f"unet.{m}": kohya.Factor(peft_sd[f"{m}.lora_A.weight"], peft_sd[f"{m}.lora_B.weight"],
                                                           alpha / rank) for m in modules})
    scale = alpha / rank
    return {f"unet.{k}": v * scale if ".lora.up." in k else v
            for k, v in convert_state_dict_to_diffusers(peft_sd).items()}
