"""An interpretable execution-time model of one device, fitted from a profile (FastDeepIoT's form).

Each layer kind gets a piecewise-linear model of its time over the layer's configuration:

    t(layer) = a + b·MACs + c·params + d·traffic + u·unfolded + e·steps + Σ_k h_k · max(0, MACs − κ_k)

(traffic = input + output elements; unfolded = a conv's im2col elements; steps = RNN time steps; κ_k =
quantiles of the profiled MACs — none, the median or the quartiles, whichever cross-validates best — so
the per-MAC cost may change where caches or kernel choices change). Coefficients come from numpy least
squares weighted by 1/t — i.e. minimising *relative* error, which is what a latency budget needs — so the
fit has no dependency beyond numpy and every coefficient can be read off the profile. A whole model is the
sum of its layers plus a fitted overhead o = o₀ + o₁·(number of layers), which absorbs the one session
call per run (each profiled layer paid its own) and the glue ops (pooling, reshapes, concatenation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from deepiot.device.layers import FEATURE_NAMES

Number = float | Tensor
TERM_NAMES = ("intercept", *FEATURE_NAMES)
KNOT_CHOICES = (
    (),
    (0.5,),
    (0.25, 0.5, 0.75),
)  # MAC quantiles; each kind takes the one that cross-validates best
CV_FOLDS = 5


def _hinge(value: Number, knot: float) -> Number:
    return torch.clamp(value - knot, min=0.0) if isinstance(value, Tensor) else max(0.0, value - knot)


@dataclass(frozen=True)
class KindModel:
    """t = Σ coefficient · term for one layer kind; terms: intercept, features, MAC hinges at `knots`."""

    coefficients: tuple[float, ...]
    knots: tuple[float, ...]
    floor_ms: float  # predictions never fall below half the fastest profiled layer of this kind

    def terms(self, features: Mapping[str, Number]) -> list[Number]:
        macs = features["macs"]
        return [1.0, *(features[name] for name in FEATURE_NAMES), *(_hinge(macs, k) for k in self.knots)]

    def predict(self, features: Mapping[str, Number]) -> Number:
        total: Number = 0.0
        for coefficient, term in zip(self.coefficients, self.terms(features), strict=True):
            total = total + coefficient * term
        return (
            torch.clamp(total, min=self.floor_ms) if isinstance(total, Tensor) else max(total, self.floor_ms)
        )

    @classmethod
    def fit(
        cls,
        rows: Sequence[Mapping[str, float]],
        times_ms: np.ndarray,
        quantiles: Sequence[float] | None = None,
    ) -> KindModel:
        """Least squares on relative error over profiled layers (`rows`: their features).

        Knots at the given MAC `quantiles`; None picks among `KNOT_CHOICES` by 5-fold cross-validation
        (median absolute relative error) on these rows, so a kind gets only the bends its data supports.
        """
        if quantiles is None:
            quantiles = min(KNOT_CHOICES, key=lambda choice: _cv_error(cls, rows, times_ms, choice))
        macs = np.array([row["macs"] for row in rows], dtype=np.float64)
        knots = tuple(float(k) for k in np.unique(np.quantile(macs, quantiles))) if quantiles else ()
        probe = cls((0.0,) * (len(TERM_NAMES) + len(knots)), knots, 0.0)
        design = np.array([[float(t) for t in probe.terms(row)] for row in rows])  # [layers, terms]
        scale = np.abs(design).max(axis=0)
        scale[scale == 0] = 1.0  # an all-zero column (steps of a conv) keeps coefficient 0
        weights = 1.0 / times_ms  # [layers]: relative error
        solution, *_ = np.linalg.lstsq(design / scale * weights[:, None], times_ms * weights, rcond=None)
        return cls(tuple(float(c) for c in solution / scale), knots, float(times_ms.min() / 2))

    def to_dict(self) -> dict[str, Any]:
        names = [*TERM_NAMES, *(f"max(0, macs - {k:.4g})" for k in self.knots)]
        return {
            "terms": dict(zip(names, self.coefficients, strict=True)),
            "knots": list(self.knots),
            "floor_ms": self.floor_ms,
        }

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> KindModel:
        return cls(tuple(document["terms"].values()), tuple(document["knots"]), float(document["floor_ms"]))


def _cv_error(
    kind_model: type[KindModel],
    rows: Sequence[Mapping[str, float]],
    times_ms: np.ndarray,
    quantiles: Sequence[float],
) -> float:
    """Median absolute relative error of `quantiles`' fit over `CV_FOLDS` folds (fixed fold assignment)."""
    folds = np.arange(len(rows)) % CV_FOLDS
    errors = []
    for fold in range(CV_FOLDS):
        train = np.flatnonzero(folds != fold)
        model = kind_model.fit([rows[i] for i in train], times_ms[train], quantiles)
        for index in np.flatnonzero(folds == fold):
            errors.append(abs(float(model.predict(rows[index])) - times_ms[index]) / times_ms[index])
    return float(np.median(errors))


@dataclass(frozen=True)
class LatencyModel:
    """Per-kind layer models plus the whole-model overhead o₀ + o₁·layers; all times in milliseconds."""

    kinds: dict[str, KindModel]
    overhead: tuple[float, float] = (0.0, 0.0)

    def layer_ms(self, kind: str, features: Mapping[str, Number]) -> Number:
        if kind not in self.kinds:
            raise ValueError(
                f"the device profile has no latency model for {kind} layers; it covers "
                f"{sorted(self.kinds)}. Profile again with this layer kind."
            )
        return self.kinds[kind].predict(features)

    def layers_sum_ms(self, rows: Sequence[Mapping[str, Any]]) -> Number:
        """Σ predicted layer times of `rows` ([{"kind", "features"}], one per layer)."""
        total: Number = 0.0
        for row in rows:
            total = total + self.layer_ms(row["kind"], row["features"])
        return total

    def model_ms(self, rows: Sequence[Mapping[str, Any]]) -> Number:
        """Predicted time of a whole model: Σ layers + o₀ + o₁·layers, never below the sum of its layers' floors
        (a fitted overhead can be negative: on a noisy profile it once took a small model's prediction below 0)."""
        total = self.layers_sum_ms(rows) + self.overhead[0] + self.overhead[1] * len(rows)
        floor = sum(self.kinds[row["kind"]].floor_ms for row in rows)
        return torch.clamp(total, min=floor) if isinstance(total, Tensor) else max(total, floor)

    def with_overhead(
        self, models: Sequence[Sequence[Mapping[str, Any]]], times_ms: np.ndarray
    ) -> LatencyModel:
        """Fit o₀, o₁ on whole models (relative least squares on measured − Σ predicted layers)."""
        sums = np.array([float(self.layers_sum_ms(rows)) for rows in models])
        design = np.array([[1.0, float(len(rows))] for rows in models])  # [models, 2]
        weights = 1.0 / times_ms
        solution, *_ = np.linalg.lstsq(design * weights[:, None], (times_ms - sums) * weights, rcond=None)
        return LatencyModel(self.kinds, (float(solution[0]), float(solution[1])))

    def to_dict(self) -> dict[str, Any]:
        return {
            "form": __doc__.splitlines()[0] if __doc__ else "",
            "kinds": {kind: model.to_dict() for kind, model in self.kinds.items()},
            "overhead": {"intercept_ms": self.overhead[0], "per_layer_ms": self.overhead[1]},
        }

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> LatencyModel:
        kinds = {kind: KindModel.from_dict(model) for kind, model in document["kinds"].items()}
        overhead = document["overhead"]
        return cls(kinds, (float(overhead["intercept_ms"]), float(overhead["per_layer_ms"])))


def fit_layers(rows: Sequence[Mapping[str, Any]], times_ms: np.ndarray) -> LatencyModel:
    """One `KindModel` per layer kind present in `rows` ([{"kind", "features"}])."""
    kinds = {}
    for kind in sorted({row["kind"] for row in rows}):
        chosen = [index for index, row in enumerate(rows) if row["kind"] == kind]
        kinds[kind] = KindModel.fit([rows[i]["features"] for i in chosen], times_ms[chosen])
    return LatencyModel(kinds)


def spearman(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman rank correlation (Pearson correlation of the ranks; ties are not averaged)."""
    if len(first) < 3:
        return float("nan")
    ranks = [np.argsort(np.argsort(values)).astype(np.float64) for values in (first, second)]
    return float(np.corrcoef(*ranks)[0, 1])


def fit_quality(predicted_ms: np.ndarray, measured_ms: np.ndarray) -> dict[str, float]:
    """Median absolute relative error, its 90th percentile and the Spearman rank correlation (NaN: no points)."""
    if len(measured_ms) == 0:
        nan = float("nan")
        return {"median_abs_rel_error": nan, "p90_abs_rel_error": nan, "spearman": nan, "count": 0}
    relative = np.abs(predicted_ms - measured_ms) / measured_ms
    return {
        "median_abs_rel_error": float(np.median(relative)),
        "p90_abs_rel_error": float(np.quantile(relative, 0.9)),
        "spearman": spearman(predicted_ms, measured_ms),
        "count": int(len(measured_ms)),
    }
