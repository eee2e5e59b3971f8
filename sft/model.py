"""Image-to-CadQuery model: a timm ViT encoder, a linear projection, a T5 decoder.

    pixels -> ViT (timm, patch tokens) -> Linear(d_vit, d_model) -> T5 decoder -> program tokens

transformers' ``VisionEncoderDecoderModel`` cannot take a T5 decoder, so the projected patch
tokens are passed as ``encoder_outputs`` to ``T5ForConditionalGeneration`` and the T5 encoder's
layers are dropped (its block list is emptied; ``config.num_layers`` stays equal to the decoder's,
which keeps ``generate``'s cache sizing right in transformers 5.x).

Retrieval-conditioned mode (``config.retrieval_layers > 0``): the model edits the programs of the
nearest training images instead of writing from nothing. The first ``retrieval_layers`` blocks of
the T5 encoder are kept and encode ``retrieved_ids`` (the tokens of k retrieved programs, each
ending in ``</s>``; a lone ``</s>`` when there is none); the decoder cross-attends to the projected
ViT tokens and those states, concatenated:

    pixels -> ViT -> Linear ----------------\
                                             concat -> T5 decoder cross-attention
    retrieved program tokens -> T5 encoder -/

The retrieved tokens share the decoder's embedding, so copying a neighbour's number is a lookup.
The plain model (``retrieval_layers == 0``) keeps no T5 encoder parameter at all, so every
trainable parameter receives a gradient (what DDP requires).

Copy head (``config.copy_head``, pointer-generator): the decoder's last hidden state attends over the
retrieved programs' token states, and a gate mixes that pointer distribution, scattered onto the
retrieved token ids, with the vocabulary distribution. The returned "logits" are then the mixture's
log-probabilities (``log_softmax`` leaves them unchanged), so losses, beam search, sampling, logits
processors and DPO read them as they read logits. A model that only reads its neighbours must learn
to reproduce a number digit by digit; with the copy head it points at it.

Two interfaces:
* causal-LM shaped, ``forward(input_ids, attention_mask, pixel_values, labels=None)``: ``input_ids``
  start with the decoder start token and logits at position t predict token t+1 (labels are
  shifted inside, as in causal LMs). SFT and TRL's DPOTrainer both use it.
* ``generate(pixel_values, ...)``: greedy, beam search or sampling with
  ``num_return_sequences``, returning sequences and their log-probabilities.

Pretrained weights (``google/vit-base-patch16-224`` through timm, ``Salesforce/codet5-small``) are
loaded when ``config.pretrained`` is set and they can be found; otherwise the model starts from
random initialisation and says so in one log line.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass

import timm
import torch
from torch import nn
from transformers import initialization as init
from transformers import PretrainedConfig, PreTrainedModel, T5Config, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutput

log = logging.getLogger(__name__)


class Img2CadConfig(PretrainedConfig):
    model_type = "img2cad"

    def __init__(self, encoder_name: str = "vit_base_patch16_224", image_size: int = 224, in_chans: int = 3,
                 encoder_kwargs: dict | None = None, decoder: dict | None = None, pretrained: bool = False,
                 pretrained_decoder: str = "Salesforce/codet5-small", vocab_size: int = 32100,
                 pad_token_id: int = 0, eos_token_id: int = 1, decoder_start_token_id: int = 0,
                 retrieval_layers: int = 0, retrieval_k: int = 1, max_retrieved_length: int = 512,
                 program_scale: float | None = None, copy_head: bool = False, **kwargs):
        self.encoder_name = encoder_name
        self.image_size = image_size
        self.in_chans = in_chans
        self.encoder_kwargs = encoder_kwargs or {}
        # CodeT5-small's decoder shape by default
        self.decoder = {"d_model": 512, "d_kv": 64, "d_ff": 2048, "num_decoder_layers": 6, "num_heads": 8,
                        "dropout_rate": 0.1, "feed_forward_proj": "relu", **(decoder or {})}
        self.pretrained = pretrained
        self.pretrained_decoder = pretrained_decoder
        self.vocab_size = vocab_size
        self.retrieval_layers = retrieval_layers  # T5 encoder blocks over retrieved programs (0: plain model)
        self.retrieval_k = retrieval_k  # retrieved programs per example in training (decoding's default)
        self.max_retrieved_length = max_retrieved_length
        self.program_scale = program_scale  # programs written and read at this largest side (None: as given)
        self.copy_head = copy_head  # pointer over the retrieved tokens mixed into the next-token distribution
        super().__init__(pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                         decoder_start_token_id=decoder_start_token_id, **kwargs)

    def get_text_config(self, *args, **kwargs) -> "Img2CadConfig":
        """This config is the text config (``decoder`` holds a shape dict, not a sub-config)."""
        return self

    def t5_config(self) -> T5Config:
        layers = self.decoder["num_decoder_layers"]
        return T5Config(vocab_size=self.vocab_size, num_layers=layers, pad_token_id=self.pad_token_id,
                        eos_token_id=self.eos_token_id, decoder_start_token_id=self.decoder_start_token_id,
                        is_encoder_decoder=True, tie_word_embeddings=True, **self.decoder)


class CopyHead(nn.Module):
    """Pointer-generator mixing: ``p = g * softmax(logits) + (1 - g) * sum_j a_j [id_j]`` where ``a``
    attends from the decoder state over the retrieved token states and ``g`` is a learned gate."""

    def __init__(self, d_model: int, gate_bias: float = 2.0):
        super().__init__()
        self.query = nn.Linear(d_model, d_model, bias=False)
        self.key = nn.Linear(d_model, d_model, bias=False)
        self.gate = nn.Linear(2 * d_model, 1)
        self.gate_bias = gate_bias
        self.copy_bias = 0.0  # decoding only: subtracted from the gate's logit (> 0 copies more); not a weight
        for layer in self.children():
            self.reset_layer(layer)

    def reset_layer(self, layer: nn.Linear) -> None:
        """Starts close to the model without it: the gate gives the vocabulary p = sigmoid(2) = 0.88.
        transformers' init functions leave loaded weights alone."""
        if layer is self.gate:
            init.zeros_(layer.weight)
            init.constant_(layer.bias, self.gate_bias)
        else:
            init.normal_(layer.weight, std=layer.in_features ** -0.5)

    def forward(self, logits: torch.Tensor, hidden: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor,
                memory_ids: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (B, T, V) of the mixture, in float32. ``hidden`` (B, T, d) are decoder
        states, ``memory`` (B, R, d) the retrieved tokens' encoder states, ``memory_ids`` their ids."""
        query, key = self.query(hidden).float(), self.key(memory).float()
        scores = (query @ key.transpose(1, 2) / query.size(-1) ** 0.5).masked_fill(~memory_mask.bool()[:, None, :], float("-inf"))
        attn = torch.softmax(scores, dim=-1)  # encode() gives every row at least a </s> to attend to
        context = (attn @ memory.float()).to(hidden.dtype)
        gate = torch.sigmoid(self.gate(torch.cat([hidden, context], dim=-1)).float() - self.copy_bias)
        copy = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
        copy = copy.scatter_add(-1, memory_ids[:, None, :].expand(-1, hidden.size(1), -1), attn * (1 - gate))
        probs = gate * torch.softmax(logits.float(), dim=-1) + copy
        return probs.clamp_min(1e-30).log()  # the floor keeps gradients finite where a probability underflows


@dataclass
class RetrievalEncoderOutput(BaseModelOutput):
    """Encoder states whose last ``retrieved_ids.size(1)`` positions are the retrieved programs'
    tokens (carried inside ``encoder_outputs`` so that ``generate`` expands them per beam)."""

    retrieved_ids: torch.Tensor | None = None


class PointerT5(T5ForConditionalGeneration):
    """T5 whose logits become copy-head log-probabilities when ``copy_head`` is set and the encoder
    output carries retrieved token ids; otherwise exactly ``T5ForConditionalGeneration``."""

    def __init__(self, config: T5Config, copy_head: bool = False):
        super().__init__(config)
        self.copy_head = CopyHead(config.d_model) if copy_head else None

    def _init_weights(self, module: nn.Module) -> None:
        head = getattr(self, "copy_head", None)  # None inside T5's own __init__
        if head is not None and any(module is layer for layer in head.children()):  # also when loading a model without one
            head.reset_layer(module)
        elif not isinstance(module, CopyHead):
            super()._init_weights(module)

    def forward(self, *args, encoder_outputs=None, attention_mask=None, output_hidden_states: bool | None = None, **kwargs):
        ids = getattr(encoder_outputs, "retrieved_ids", None)
        if self.copy_head is None or ids is None:
            return super().forward(*args, encoder_outputs=encoder_outputs, attention_mask=attention_mask,
                                   output_hidden_states=output_hidden_states, **kwargs)
        out = super().forward(*args, encoder_outputs=encoder_outputs, attention_mask=attention_mask,
                              output_hidden_states=True, **kwargs)
        memory = encoder_outputs.last_hidden_state[:, -ids.size(1):]
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask[:, -ids.size(1):]
        out.logits = self.copy_head(out.logits, out.decoder_hidden_states[-1], memory, mask, ids)
        if not output_hidden_states:
            out.decoder_hidden_states = out.encoder_hidden_states = None
        return out


class Img2CadModel(PreTrainedModel):
    config_class = Img2CadConfig
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = False
    _no_split_modules: list[str] = []

    def __init__(self, config: Img2CadConfig):
        super().__init__(config)
        self.encoder = timm.create_model(config.encoder_name, pretrained=False, num_classes=0,
                                         img_size=config.image_size, in_chans=config.in_chans, **config.encoder_kwargs)
        d_model = config.decoder["d_model"]
        self.proj = nn.Linear(self.encoder.num_features, d_model)
        if config.copy_head and not config.retrieval_layers:
            raise ValueError("copy_head needs retrieval_layers > 0: a plain model reads nothing to copy")
        self.t5 = PointerT5(config.t5_config(), copy_head=config.copy_head)
        if config.retrieval_layers:
            self.t5.encoder.block = self.t5.encoder.block[: config.retrieval_layers]
        else:  # the plain model never runs the T5 encoder: the ViT replaces it
            self.t5.encoder.block = nn.ModuleList()
            self.t5.encoder.final_layer_norm = nn.Identity()
        self.post_init()
        self.generation_config = self.t5.generation_config  # trainers (TRL) read the pad token here

    # ---- encoding ---------------------------------------------------------------------------
    @property
    def retrieval_conditioned(self) -> bool:
        return bool(self.config.retrieval_layers)

    def encode(self, pixel_values: torch.Tensor, retrieved_ids: torch.Tensor | None = None,
               retrieved_attention_mask: torch.Tensor | None = None) -> tuple[BaseModelOutput, torch.Tensor]:
        """Encoder states and their attention mask: projected ViT tokens (class and patch tokens),
        followed in retrieval-conditioned mode by the T5 encoder's states of the retrieved programs
        (a lone ``</s>`` per row when ``retrieved_ids`` is None)."""
        vis = self.proj(self.encoder.forward_features(pixel_values.to(self.proj.weight.dtype)))
        mask = torch.ones(vis.shape[:2], dtype=torch.long, device=vis.device)
        if not self.retrieval_conditioned:
            return BaseModelOutput(last_hidden_state=vis), mask
        if retrieved_ids is None:
            retrieved_ids = torch.full((vis.size(0), 1), self.config.eos_token_id, dtype=torch.long, device=vis.device)
        if retrieved_attention_mask is None:
            retrieved_attention_mask = torch.ones_like(retrieved_ids)
        ret = self.t5.encoder(input_ids=retrieved_ids, attention_mask=retrieved_attention_mask, return_dict=True)
        states = torch.cat([vis, ret.last_hidden_state.to(vis.dtype)], dim=1)
        out = RetrievalEncoderOutput(last_hidden_state=states, retrieved_ids=retrieved_ids)
        return out, torch.cat([mask, retrieved_attention_mask.long()], dim=1)

    # ---- causal-LM-shaped forward -----------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                retrieved_ids: torch.Tensor | None = None, retrieved_attention_mask: torch.Tensor | None = None,
                encoder_outputs: BaseModelOutput | None = None, encoder_attention_mask: torch.Tensor | None = None,
                fused_lm_head: bool = False, **kwargs):
        """Logits (and loss with ``labels``); with ``fused_lm_head=True`` per-token log-probs instead.

        ``fused_lm_head`` follows TRL's contract (``trl.trainer.utils.FusedCausalLMOutput``): per-token
        ``log_probs``, ``entropy``, ``mean_logits`` and ``is_top1`` of each next-token label, zero
        where the label is -100. The logits are small here, so they are materialised.
        """
        if encoder_outputs is None:
            if pixel_values is None:
                raise ValueError("Img2CadModel.forward needs pixel_values (or encoder_outputs)")
            encoder_outputs, encoder_attention_mask = self.encode(pixel_values, retrieved_ids, retrieved_attention_mask)
        out = self.t5(encoder_outputs=encoder_outputs, attention_mask=encoder_attention_mask, decoder_input_ids=input_ids,
                      decoder_attention_mask=attention_mask, use_cache=False, return_dict=True)
        logits = out.logits
        if fused_lm_head:
            return per_token_outputs(logits, labels)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(),
                                               labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)

    # ---- generation -------------------------------------------------------------------------
    @contextmanager
    def copy_biased(self, bias: float):
        """Inside the block, the copy gate's logit is lowered by ``bias`` (decoding only); after it,
        the head is as trained."""
        head = self.t5.copy_head
        if bias and head is None:
            raise ValueError("copy_bias needs a model with a copy head (copy_head: true)")
        if head is None:
            yield
            return
        head.copy_bias = float(bias)
        try:
            yield
        finally:
            head.copy_bias = 0.0

    @torch.no_grad()
    def generate_programs(self, pixel_values: torch.Tensor, max_new_tokens: int = 256, num_beams: int = 1,
                          do_sample: bool = False, num_return_sequences: int = 1, temperature: float = 1.0,
                          top_p: float = 1.0, logits_processor=None, retrieved_ids: torch.Tensor | None = None,
                          retrieved_attention_mask: torch.Tensor | None = None, copy_bias: float = 0.0) -> "Generated":
        """Decode programs; returns token ids (without the start token) and sequence log-probs.
        ``copy_bias`` (copy-head models) shifts the copy gate's logit towards copying retrieved
        tokens while decoding; the log-probs are then those of the shifted mixture."""
        with self.copy_biased(copy_bias):
            enc, enc_mask = self.encode(pixel_values, retrieved_ids, retrieved_attention_mask)
            out = self.t5.generate(
                encoder_outputs=enc, attention_mask=enc_mask, max_new_tokens=max_new_tokens, num_beams=num_beams,
                do_sample=do_sample, num_return_sequences=num_return_sequences, temperature=temperature if do_sample else None,
                top_p=top_p if do_sample else None, top_k=0 if do_sample else None,
                output_scores=True, return_dict_in_generate=True, logits_processor=logits_processor,
                decoder_start_token_id=self.config.decoder_start_token_id, eos_token_id=self.config.eos_token_id,
                pad_token_id=self.config.pad_token_id,
            )
        seqs = out.sequences
        if num_beams > 1 and getattr(out, "sequences_scores", None) is not None:
            lengths = (seqs[:, 1:] != self.config.pad_token_id).sum(1).clamp(min=1)
            logprobs = out.sequences_scores * lengths  # beam scores are length-normalised
        else:
            trans = self.t5.compute_transition_scores(seqs, out.scores, normalize_logits=True)
            trans = torch.where(torch.isfinite(trans), trans, torch.zeros_like(trans))
            logprobs = trans.sum(-1)
        return Generated(seqs[:, 1:], logprobs.float())

    @torch.no_grad()
    def score_sequences(self, pixel_values: torch.Tensor, sequences: list[list[int]],
                        retrieved_ids: torch.Tensor | None = None,
                        retrieved_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Sum of token log-probabilities of each given program (token ids ending in EOS, no start
        token) under the model, given its image (row i of ``pixel_values``): the model's likelihood
        of a program it did not write, e.g. a retrieved one."""
        device = pixel_values.device
        width = max(len(s) for s in sequences) + 1
        ids = torch.full((len(sequences), width), self.config.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        ids[:, 0] = self.config.decoder_start_token_id
        for i, seq in enumerate(sequences):
            ids[i, 1:len(seq) + 1] = torch.tensor(seq, dtype=torch.long)
            mask[i, :len(seq) + 1] = True
        ids, mask = ids.to(device), mask.to(device)
        logits = self.forward(ids, attention_mask=mask.long(), pixel_values=pixel_values, retrieved_ids=retrieved_ids,
                              retrieved_attention_mask=retrieved_attention_mask).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        return (logp * mask[:, 1:]).sum(-1)

    # ---- pretrained weights -----------------------------------------------------------------
    def load_pretrained_parts(self) -> list[str]:
        """Load public weights where reachable; returns what was loaded (logs what was not)."""
        loaded = []
        try:
            ref = timm.create_model(self.config.encoder_name, pretrained=True, num_classes=0,
                                    img_size=self.config.image_size, in_chans=self.config.in_chans,
                                    **self.config.encoder_kwargs)
            self.encoder.load_state_dict(ref.state_dict())
            loaded.append(self.config.encoder_name)
        except Exception as exc:  # noqa: BLE001 - offline, unknown name or shape mismatch
            log.warning("encoder %s: no pretrained weights (%s: %s); random initialisation",
                        self.config.encoder_name, type(exc).__name__, str(exc)[:120])
        try:
            ref = T5ForConditionalGeneration.from_pretrained(self.config.pretrained_decoder)
            keep = self.config.retrieval_layers  # CodeT5's first encoder blocks encode the retrieved programs
            state = {k: v for k, v in ref.state_dict().items()
                     if not k.startswith("encoder.") or (keep and (not k.startswith("encoder.block.")
                                                                   or int(k.split(".")[2]) < keep))}
            if ref.config.vocab_size != self.config.vocab_size:
                state = {k: v for k, v in state.items() if "shared" not in k and "embed_tokens" not in k and "lm_head" not in k}
            self.t5.load_state_dict(state, strict=False)
            loaded.append(self.config.pretrained_decoder)
        except Exception as exc:  # noqa: BLE001
            log.warning("decoder %s: no pretrained weights (%s: %s); random initialisation",
                        self.config.pretrained_decoder, type(exc).__name__, str(exc)[:120])
        return loaded


def per_token_outputs(logits: torch.Tensor, labels: torch.Tensor):
    """TRL's FusedCausalLMOutput fields from materialised logits (position t scores label t+1)."""
    from trl.trainer.utils import FusedCausalLMOutput

    shifted = logits[:, :-1].float()
    target = labels[:, 1:]
    mask = target != -100
    logp = torch.log_softmax(shifted, dim=-1)
    safe = target.clamp(min=0).unsqueeze(-1)
    log_probs = logp.gather(-1, safe).squeeze(-1).masked_fill(~mask, 0.0)
    entropy = -(logp.exp() * logp).sum(-1).masked_fill(~mask, 0.0)
    with torch.no_grad():
        mean_logits = shifted.mean(-1).masked_fill(~mask, 0.0)
        is_top1 = (shifted.argmax(-1) == target) & mask
        log_sum_sq = torch.logsumexp(2 * logp, dim=-1).masked_fill(~mask, 0.0)
    loss = -log_probs.sum() / mask.sum().clamp(min=1)
    return FusedCausalLMOutput(loss=loss, log_probs=log_probs, entropy=entropy, log_sum_sq_probs=log_sum_sq,
                               mean_logits=mean_logits, is_top1=is_top1, label_mask=mask)


@dataclass
class Generated:
    sequences: torch.Tensor  # (B * num_return_sequences, T) token ids, no start token
    logprobs: torch.Tensor  # (B * num_return_sequences,) sum of token log-probabilities


def build_model(config: Img2CadConfig) -> Img2CadModel:
    model = Img2CadModel(config)
    if config.pretrained:
        model.load_pretrained_parts()
    else:
        log.info("Img2CadModel: random initialisation (%s + T5 decoder, %.1fM parameters)",
                 config.encoder_name, sum(p.numel() for p in model.parameters()) / 1e6)
    return model


def load_model(path: str, device: str | torch.device = "cpu"):
    """(model, tokenizer, image processor) from a directory written by SFT or DPO."""
    from transformers import PreTrainedTokenizerFast

    from sft.image_processing import ImageProcessor

    model = Img2CadModel.from_pretrained(path).to(device).eval()
    return model, PreTrainedTokenizerFast.from_pretrained(path), ImageProcessor.from_pretrained(path)
