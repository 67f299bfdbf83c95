"""The origin layer of one sequence in full: :func:`origin_detail` re-runs one window (by default
the scan's carrier) with full tensors, because the streaming scan keeps none.
"""

from __future__ import annotations
from dataclasses import dataclass
from typing import Any
import numpy as np
import torch
from analyses.massive.locate import MassiveScan, read_weights, scan_windows
from probe.arch import arch_for
from probe.capture import one_sequence
from probe.display import Figured
from probe.errors import ProbeError


@dataclass
class OriginDetail(Figured):
    """Full tensors of one sequence at one layer (by default the scan's origin layer); ``figure()``
    is :func:`analyses.massive.figures.origin_heatmap`.

    ``resid``: the residual stream ``hook_resid_post`` ``(position, d_model)``; ``post``: the FFN
    intermediate state ``act(W_gate x) * (W_up x)`` ``(d_ff,)`` at ``position``, the token with the
    largest ``|h|`` (at ``dim``); ``neurons``: the top-``k`` ``|post|`` dims; ``row_norms``: the L2
    norm of every row of ``W_up`` and ``W_gate`` (``W_in`` when not gated) of that layer;
    ``median``, ``abs_threshold``, ``ratio``: the scan's layer median and thresholds, which mark
    the massive cells of ``resid``.
    """

    model: str
    layer: int
    ids: list[int]
    tokens: list[str]
    position: int
    dim: int
    resid: np.ndarray
    post: np.ndarray
    neurons: list[int]
    row_norms: dict[str, np.ndarray]
    median: float
    abs_threshold: float
    ratio: float

    @property
    def massive_mask(self) -> np.ndarray:
        a = np.abs(self.resid)
        return (a > self.abs_threshold) & (a > self.ratio * self.median)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "layer": self.layer, "ids": list(self.ids), "tokens": list(self.tokens),
                "position": self.position, "dim": self.dim, "resid": self.resid.tolist(),
                "post": self.post.tolist(), "neurons": list(self.neurons),
                "row_norms": {k: v.tolist() for k, v in self.row_norms.items()},
                "median": self.median, "abs_threshold": self.abs_threshold, "ratio": self.ratio}


def carrier_ids(tokenizer: Any, scan: MassiveScan) -> torch.Tensor:
    """The scan's window that carries its strongest massive activation (``scan.carrier``)."""
    if scan.carrier is None:
        raise ProbeError("the scan found no massive activations; pass the token ids of a sequence to origin_detail")
    return scan_windows(tokenizer, scan)[scan.carrier["batch"]]


def origin_detail(model: torch.nn.Module, tokenizer: Any, scan: MassiveScan, ids: torch.Tensor | None = None,
                  *, layer: int | None = None, k: int | None = None) -> OriginDetail:
    """Re-run one sequence (``ids``, default :func:`carrier_ids`) with full tensors of ``layer``
    (default the origin layer): one forward pass, two hook points, plus the weight row norms."""
    layer = scan.origin_layer if layer is None else layer
    if layer is None:
        raise ProbeError("the scan found no origin layer; pass layer= explicitly")
    if not 0 <= layer < len(scan.layers):
        raise ProbeError(f"layer {layer} is out of range 0..{len(scan.layers) - 1}")
    ids = carrier_ids(tokenizer, scan) if ids is None else torch.as_tensor(ids)
    ids = ids.reshape(-1)
    points = [f"blocks.{layer}.hook_resid_post", f"blocks.{layer}.mlp.hook_post"]
    full = one_sequence(model, ids, points, torch.float32)
    resid = full[points[0]]
    flat = int(resid.abs().argmax())
    position, dim = divmod(flat, resid.shape[1])
    post = full[points[1]][position]
    k = k or len(scan.massive_neurons) or 5
    _, norms = read_weights(model, [], layer, list(arch_for(model).ffn_in_names))
    return OriginDetail(
        model=scan.model, layer=layer, ids=ids.tolist(), tokens=tokenizer.convert_ids_to_tokens(ids.tolist()),
        position=position, dim=dim, resid=resid.numpy(), post=post.numpy(),
        neurons=post.abs().topk(k).indices.tolist(), row_norms={n: v.numpy() for n, v in norms.items()},
        median=scan.layers[layer].median, abs_threshold=scan.abs_threshold, ratio=scan.ratio)
