"""The ONNX Runtime backend: the model builder's decoder, called like ``model.Llama`` by the one ``Engine``.

An export folder (``polytask.onnx_export``) holds onnxruntime-genai's ``model.onnx``: fused
MatMul/MatMulNBits projections and one ``GroupQueryAttention`` node per layer that applies the
rotary embedding itself, reads ``past_key_values.N.key/value`` and writes ``present.N.key/value``.
``OnnxLlama`` runs it over polytask's own ``KVCache``: each layer's slice of the cache is bound as
both the past and the present buffer (ORT's shared-buffer mode, as onnxruntime-genai runs it), so
a step writes its new keys and values in place at ``cache.pos`` and nothing is copied.

Two facts about GroupQueryAttention shape how polytask's calls map onto it:

- It places each key at the position of its slot (from the ``attention_mask`` length); it has no
  use for ``positions``. Rotary attention depends only on the distance between a query and a key,
  so a left-padded row whose tokens sit at slots ``pad..`` gives the logits it gives at positions
  ``0..`` (to rounding). The padding itself is masked through the node's optional
  ``attention_bias`` input, which the builder leaves unconnected and ``OnnxLlama`` wires to a graph
  input when it loads the file (the folder on disk stays the builder's, for onnxruntime-genai).
- It refuses several new positions per row for a batch of more than one row once a cache holds
  keys ("batch_size must be 1 when sequence_length > 1 and past context is given"): prompt-lookup
  windows run for one prompt at a time (``batched_windows`` below), batches decode a token a step.

The same load-time edit puts a Gather of the positions whose logits are wanted (``logit_positions``)
in front of the head, so a prefill computes the logits of its last position only, as the torch
model's ``last_only`` does: at 49,152 words the head is a fifth of the model's work per position.

One more fact, about the int8/int4 exports: ORT's MatMulNBits (at the builder's accuracy level 4)
computes a call of several rows with int8-quantized activations and a call of one row without, so
a prompt-lookup window's logits differ from one-token steps' by about 1 (of 37 on SmolLM2-135M;
int4's own error against fp32 is about 10) and a near tie can go the other way. Decoding a token a
step gives onnxruntime-genai's generator's tokens exactly; fp32 windows agree to 5e-5.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from polytask.errors import PolytaskError
from polytask.kv_cache import KVCache
from polytask.model import ModelConfig

log = logging.getLogger(__name__)

GENAI_CONFIG = "genai_config.json"
BIAS_INPUT = "attention_bias"
POSITIONS_INPUT = "logit_positions"
_GQA_BIAS_SLOT = 10  # GroupQueryAttention's inputs: ..., 9 position_ids, 10 attention_bias, 11 head_sink


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise PolytaskError(
            "the ONNX Runtime backend needs onnxruntime; install polytask's pinned versions with: "
            "pip install -e . (or pip install onnxruntime==1.31.1 onnxruntime-genai==0.18.0 onnx)"
        ) from None
    return onnxruntime


def read_genai_config(folder: Path) -> dict:
    path = folder / GENAI_CONFIG
    try:
        return json.loads(path.read_text())["model"]
    except FileNotFoundError:
        raise PolytaskError(f"{folder}: no {GENAI_CONFIG}; is this an ONNX export folder?") from None
    except (ValueError, KeyError, TypeError) as e:
        raise PolytaskError(f"{path}: not a readable onnxruntime-genai config ({e}); re-export the folder") from None


def config_from_genai(model: dict, where: str) -> ModelConfig:
    """The architecture an export folder's genai_config.json describes (the width of the MLP is not
    in it, and nothing here needs it)."""
    try:
        d = model["decoder"]
        return ModelConfig(
            vocab_size=int(model["vocab_size"]),
            dim=int(d["hidden_size"]),
            num_layers=int(d["num_hidden_layers"]),
            num_heads=int(d["num_attention_heads"]),
            num_kv_heads=int(d["num_key_value_heads"]),
            hidden_dim=0,
            max_seq_len=int(model["context_length"]),
            head_dim=int(d["head_size"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise PolytaskError(f"{where}: genai_config.json lacks a decoder setting ({e}); re-export the folder") from None


def _adapt_graph(proto, where: str, config: ModelConfig) -> None:
    """Connect every GroupQueryAttention's attention_bias to one new graph input and gather the
    head's input at ``logit_positions`` (see the module docstring), after checking that the graph
    is the decoder its genai_config.json describes."""
    from onnx import TensorProto, helper

    graph = proto.graph
    names = {i.name for i in graph.input}
    layers = sum(1 for n in names if n.startswith("past_key_values.") and n.endswith(".key"))
    attention = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    if layers != config.num_layers or len(attention) != config.num_layers or "input_ids" not in names:
        raise PolytaskError(
            f"{where}: model.onnx has {len(attention)} attention layers and {layers} cached ones, its "
            f"genai_config.json says {config.num_layers}; the folder mixes files of two exports, re-export it"
        )
    for node in attention:
        while len(node.input) <= _GQA_BIAS_SLOT:
            node.input.append("")
        node.input[_GQA_BIAS_SLOT] = BIAS_INPUT
    graph.input.append(
        helper.make_tensor_value_info(
            BIAS_INPUT, TensorProto.FLOAT, ["batch_size", 1, "sequence_length", "total_sequence_length"]
        )
    )
    heads = [n for n in graph.node if list(n.output) == ["logits"]]
    if len(heads) != 1:
        raise PolytaskError(f"{where}: no single node makes the logits; is this a model builder export?")
    hidden, gathered = heads[0].input[0], "/polytask/logit_positions/Gather/output_0"
    graph.node.insert(list(graph.node).index(heads[0]),
                      helper.make_node("Gather", [hidden, POSITIONS_INPUT], [gathered], axis=1,
                                       name="/polytask/logit_positions/Gather"))
    heads[0].input[0] = gathered
    graph.input.append(helper.make_tensor_value_info(POSITIONS_INPUT, TensorProto.INT64, ["num_logits"]))
    (logits,) = [o for o in graph.output if o.name == "logits"]
    logits.type.tensor_type.shape.dim[1].dim_param = "num_logits"


def open_session(folder: Path, threads: int | None = None):
    """An InferenceSession over ``folder``'s model.onnx with the attention bias and the logit positions wired in.

    The graph file is small (the weights are in model.onnx.data); it is edited in memory and ORT
    reads the external weights from ``folder``."""
    ort = import_onnxruntime()
    import onnx
    from google.protobuf.message import DecodeError

    path = folder / "model.onnx"
    config = config_from_genai(read_genai_config(folder), str(folder / GENAI_CONFIG))
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise PolytaskError(f"{folder}: no model.onnx; is this an ONNX export folder?") from None
    except (DecodeError, OSError, ValueError) as e:
        raise PolytaskError(f"{path}: not a readable ONNX model ({e}); truncated or corrupt, re-export it") from None
    _adapt_graph(proto, str(path), config)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    # ORT's threads spin after a run by default, waiting for the next; between two decode steps the
    # engine samples in torch, whose threads then fight them for the cores. Without spinning, batch-1
    # int4 decoding on 2 cores ran 57 tokens/s instead of 28, batch 8 123 instead of 74.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 4  # ORT logs its errors too; polytask reports them as one line of its own
    opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(folder))
    try:
        session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own Fail / InvalidGraph / RuntimeException classes
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PolytaskError(
            f"{folder}: ONNX Runtime cannot load the model ({first}); model.onnx.data is truncated or "
            f"corrupt, re-export the folder"
        ) from None
    return session, config


class OnnxLlama:
    """The model builder's decoder behind ``Llama``'s inference call: ``model(tokens, cache=,
    mask=, last_only=)`` -> logits (batch, seq or 1, vocab) as a torch tensor; ``cache`` is a
    ``KVCache`` in fp32 (its keys/values are the session's cache buffers), ``mask`` the engine's
    boolean (batch, 1, seq, kv_len) mask of the keys each query may see. No training."""

    # GroupQueryAttention takes several new positions per row only for a batch of one (module docstring).
    batched_windows = False
    cache_dtype = torch.float32
    device = torch.device("cpu")

    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        self.folder = Path(folder)
        self.session, self.config = open_session(self.folder, threads)
        self._bias_zeros = torch.zeros(0)

    def eval(self) -> OnnxLlama:
        return self

    def __call__(
        self,
        tokens: torch.Tensor,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        last_only: bool = False,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``cache``: a ``KVCache`` or an ``kv_cache.SlotCache``. ``positions`` is accepted
        and unused: each key's position is its slot (module docstring). ``keep`` (bool, (batch,
        seq)), as for ``Llama``: logits (n, vocab) of its n True positions only (the graph's head
        runs on the positions that any row keeps)."""
        cfg = self.config
        batch, t = tokens.shape
        io = self.session.io_binding()
        io.bind_cpu_input("input_ids", np.ascontiguousarray(tokens.numpy(), dtype=np.int64))
        if keep is not None:
            columns = keep.any(0).nonzero().squeeze(1)
            wanted = columns.numpy().astype(np.int64)
        else:
            wanted = np.array([t - 1] if last_only else range(t), dtype=np.int64)
        io.bind_cpu_input(POSITIONS_INPUT, wanted)
        logits = torch.empty(batch, len(wanted), cfg.vocab_size, dtype=torch.float32)
        io.bind_output("logits", "cpu", 0, np.float32, list(logits.shape), logits.data_ptr())
        if cache is None:
            total = t
            empty = np.zeros((batch, cfg.num_kv_heads, 0, cfg.head_dim), dtype=np.float32)
            for layer in range(cfg.num_layers):
                for kind in ("key", "value"):
                    io.bind_cpu_input(f"past_key_values.{layer}.{kind}", empty)
                    io.bind_output(f"present.{layer}.{kind}", "cpu")
            io.bind_cpu_input("attention_mask", np.ones((batch, total), dtype=np.int64))
        elif isinstance(cache, KVCache):
            # Every row holds cache.pos keys and writes at slot cache.pos: an attention mask of all
            # ones (GroupQueryAttention reads only its length); which keys a query sees is the bias's business.
            total = cache.pos + t
            if total > cache.max_len:
                raise PolytaskError(f"the KV cache holds {cache.max_len} positions, this step needs {total}")
            self._bind_cache(io, cache.k, cache.v, batch)
            io.bind_cpu_input("attention_mask", np.ones((batch, total), dtype=np.int64))
        else:
            # A SlotCache step: row i holds write_at[i] keys and writes its t new keys from there,
            # which is GroupQueryAttention's own layout (each row's length from its attention mask;
            # the node's causal masking within the window). Several keys per row only for one row.
            assert t == 1 or batch == 1, "GroupQueryAttention verifies windows for one row only"
            lengths = cache.write_at.cpu()
            total = int(lengths.max()) + t
            self._bind_cache(io, cache.k[:, :batch], cache.v[:, :batch], batch)
            io.bind_cpu_input("attention_mask", (torch.arange(total)[None, :] < lengths[:, None] + t).long().numpy())
            mask = None  # the per-row lengths are the mask
        io.bind_cpu_input(BIAS_INPUT, self._bias(mask, t, total))
        self.session.run_with_iobinding(io)
        if cache is not None:
            cache.advance(t)
        return logits if keep is None else logits[keep[:, columns]]

    def _bind_cache(self, io, k: torch.Tensor, v: torch.Tensor, batch: int) -> None:
        """Bind each layer's keys/values (layers, batch, kv_heads, capacity, head_dim) as both the past
        and the present buffer: ORT writes this step's keys in place."""
        assert k.dtype == torch.float32 and k[0].is_contiguous() and v[0].is_contiguous(), "an fp32 cache"
        shape = list(k.shape[1:])
        for layer in range(self.config.num_layers):
            for kind, buf in (("key", k[layer]), ("value", v[layer])):
                io.bind_input(f"past_key_values.{layer}.{kind}", "cpu", 0, np.float32, shape, buf.data_ptr())
                io.bind_output(f"present.{layer}.{kind}", "cpu", 0, np.float32, shape, buf.data_ptr())

    def _bias(self, mask: torch.Tensor | None, t: int, total: int) -> np.ndarray:
        """The additive (batch or 1, 1, t, total) attention bias: 0 where ``mask`` lets a query see
        a key, -inf elsewhere; zeros without a mask (the node's own causal masking suffices)."""
        if mask is None:
            if self._bias_zeros.numel() < t * total:
                self._bias_zeros = torch.zeros(max(t * total, 2 * self._bias_zeros.numel()))
            return self._bias_zeros[: t * total].view(1, 1, t, total).numpy()
        assert mask.shape[-2:] == (t, total), f"mask {tuple(mask.shape)} for {t} queries over {total} keys"
        bias = torch.zeros(mask.shape, dtype=torch.float32).masked_fill_(~mask, float("-inf"))
        return bias.numpy()
