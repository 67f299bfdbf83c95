"""Does the picture move with the window protocol? One scan per prefix, side by side.

Massive activations sit on the first token of a window (Sun et al. 2024, §2), and what that
token is changes what a scan finds: on SmolLM2 every prefix gives the same origin layer and
super weight, while on another family (a real instruct GGUF, issue 15) a prefix the model never
saw at a document start (``<|endoftext|>``) took the sink away from position 0, and the scan
reported a later origin, a massive activation in 1 window of 16 and a different super weight. :func:`compare_prepend` runs :func:`analyses.massive.scan` once per
protocol (:func:`probe.data.window_protocol`) on the same text and reports, per protocol, the
origin layer, the carrier, how many windows' first token carries the top massive dim, the top
neuron and the super weight; ``warnings`` says what moved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from analyses.massive.locate import MassiveScan, scan
from probe.data import window_protocol
from probe.display import Figured

DEFAULT_PREPENDS = ("auto", "none", "bos", "eos")


def alternatives(tokenizer: Any, prepends: tuple[str, ...] = DEFAULT_PREPENDS) -> list[str]:
    """``prepends`` that resolve to distinct prefixes for ``tokenizer`` (the first name wins;
    ``bos``/``eos`` are left out where the tokenizer has none)."""
    seen: dict[tuple[int, ...], str] = {}
    for prepend in prepends:
        try:
            ids = window_protocol(tokenizer, prepend).ids
        except ValueError:
            continue
        seen.setdefault(ids, prepend)
    return list(seen.values())


def others(tokenizer: Any, prepend: str | int | None) -> list[str]:
    """The :func:`alternatives` whose prefix differs from ``prepend``'s: what to compare it with."""
    first = window_protocol(tokenizer, prepend).ids
    return [p for p in alternatives(tokenizer) if window_protocol(tokenizer, p).ids != first]


@dataclass
class PrependComparison(Figured):
    """The scans of one model under several window protocols (:func:`compare_prepend`)."""

    model: str
    scans: list[MassiveScan]
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, model: str, scans: list[MassiveScan]) -> "PrependComparison":
        """The comparison of ``scans`` (same model and text, one protocol each), warnings included."""
        result = cls(model, scans)
        result.warnings = _moved(result.rows())
        return result

    def rows(self) -> list[dict[str, Any]]:
        """One summary row per protocol."""
        out = []
        for s in self.scans:
            top = s.carriers[0] if s.carriers else None
            sw = s.super_weight
            out.append({
                "protocol": s.protocol["text"], "label": label(s.protocol), "prepend": s.protocol["prepend"],
                "origin_layer": s.origin_layer,
                "massive_dims": s.massive_dims,
                "carrier": None if s.carrier is None else {k: s.carrier[k] for k in ("position", "dim", "value", "token")},
                "first_token_windows": None if top is None else top["first_token"],
                "windows": None if top is None else top["windows"], "n_windows": s.n_seqs,
                "top_neuron": s.massive_neurons[0] if s.massive_neurons else None,
                "super_weight": None if sw is None else [sw["layer"], sw["row"], sw["col"]],
                "max_abs": max(l.max for l in s.layers),
            })
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "rows": self.rows(), "warnings": self.warnings,
                "scans": [s.to_dict() for s in self.scans]}

    def figure(self) -> Any:
        """Max/median of the residual stream per layer, one line per protocol."""
        import plotly.graph_objects as go

        from analyses.report.style import TEMPLATE, esc

        fig = go.Figure([go.Scatter(x=[l.layer for l in s.layers], y=[l.ratio for l in s.layers], mode="lines+markers",
                                    name=esc(label(s.protocol))) for s in self.scans])
        fig.update_layout(template=TEMPLATE, yaxis_type="log", xaxis_title="layer (hook_resid_post)",
                          yaxis_title="max |h| / median |h|", title=f"Massive activations of {esc(self.model)} under each window protocol",
                          legend={"orientation": "h", "y": -0.2})
        return fig


def label(protocol: dict[str, Any]) -> str:
    """A protocol in a few words: ``auto: nothing``, ``bos: '<s>' (1)``."""
    tokens = ", ".join(f"{t!r} ({i})" for t, i in zip(protocol["tokens"], protocol["ids"]))
    return f"{protocol['prepend']}: {tokens or 'nothing'}"


def compare_prepend(model: Any, tokenizer: Any, prepends: list[str] | None = None, **options: Any) -> PrependComparison:
    """:func:`analyses.massive.scan` once per protocol in ``prepends`` (default: the distinct
    ones of ``auto``, ``none``, ``bos``, ``eos``), same corpus and options; ``warnings`` when
    the origin layer, the top massive dim, the carrier position or the super weight differ."""
    chosen = alternatives(tokenizer) if prepends is None else list(prepends)
    return PrependComparison.of(options.get("name", "model"), [scan(model, tokenizer, prepend=p, **options) for p in chosen])


def _moved(rows: list[dict[str, Any]]) -> list[str]:
    checks = (("origin layer", lambda r: r["origin_layer"]),
              ("top massive dim", lambda r: r["massive_dims"][0] if r["massive_dims"] else None),
              ("carrier position", lambda r: None if r["carrier"] is None else r["carrier"]["position"]),
              ("super weight", lambda r: r["super_weight"]))
    out = []
    for what, get in checks:
        values = [get(r) for r in rows]
        if len({repr(v) for v in values}) > 1:
            out.append(f"the {what} moves with the window protocol: "
                       + "; ".join(f"{r['prepend']} -> {v}" for r, v in zip(rows, values)))
    return out
