"""Recipes: several products on one line, each with its own bundle, threshold and part size.

Every recipe's bundle is loaded, threshold-checked and self-checked before the daemon starts
(and again on SIGHUP), so a switch between two parts is one reference swap: no load, no
gap, and never a product judged by a bundle that was not proven to answer. Without recipes
the book holds the one inspector of the `model` section under the name None.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.inference import bundle as bundle_fmt
from edge.inference.inspector import Inspector
from edge.inference.override import ThresholdRefused, recorded_scores
from edge.inference.policy import PolicyError, choose, parse_policy
from edge.vision.locate import LocateConfig
from edge.vision.partview import output_of


class RecipeError(ValueError):
    """A recipe that cannot run; `key` is its config key path, for a line-precise message."""

    def __init__(self, key: tuple[str, ...], message: str) -> None:
        super().__init__(f"{'.'.join(key)}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True)
class Recipe:
    """One product: the inspector that judges it and where its part is found."""

    name: str | None  # None: no recipes configured (the model section)
    inspector: Inspector
    locate: LocateConfig
    roi: tuple[int, int, int, int] | None

    @property
    def model_id(self) -> str:
        return self.inspector.model_id


def policy_threshold(meta: Mapping[str, Any], policy: str) -> float:
    """The threshold `policy` chooses on the validation scores the bundle recorded (guard faults
    score 1.0, rejects at any threshold), exactly as the trainer chose the bundle's own."""
    scores = recorded_scores(meta)
    if scores is None:
        raise PolicyError(f"{policy}: the bundle records no validation scores to choose a threshold on "
                          "(record them with `edge-train scores`), or give a fixed threshold")
    defect, good = scores
    labels = np.r_[np.ones(len(defect), bool), np.zeros(len(good), bool)]
    try:
        output = output_of(dict(meta))
    except ValueError as exc:
        raise PolicyError(f"{policy}: {exc}") from None
    return choose(labels, np.r_[defect, good], parse_policy(policy), output)


@dataclass(frozen=True)
class RecipeSpec:
    """A recipe as configured (the wiring fills it from the config's recipes.products)."""

    name: str | None
    bundle: Path
    threshold: float | None
    accept_validation_escapes: int | None
    locate: LocateConfig
    roi: tuple[int, int, int, int] | None
    key: tuple[str, ...]  # its config key, for messages
    threshold_policy: str | None = None  # cost:R | recall:X on the bundle's recorded validation scores

    def load(self, threads: int = 1) -> Recipe:
        key = self.key
        which = "threshold_policy" if self.threshold_policy is not None else "threshold"
        try:
            bundle = bundle_fmt.load(self.bundle)
            threshold = self.threshold
            if self.threshold_policy is not None:
                threshold = policy_threshold(bundle.meta, self.threshold_policy)
            inspector = Inspector.load(bundle, threshold, threads, self.accept_validation_escapes,
                                       key=".".join(key + (which,)), recipe=self.name)
            inspector.self_check()
        except (ThresholdRefused, PolicyError) as exc:
            raise RecipeError(key + (which,), str(exc)) from None
        except bundle_fmt.BundleError as exc:
            raise RecipeError(key + ("bundle",), str(exc)) from None
        except OSError as exc:
            raise RecipeError(key + ("bundle",), f"{self.bundle}: cannot read: {exc.strerror or exc}") from None
        return Recipe(self.name, inspector, self.locate, self.roi)


class RecipeBook:
    """The loaded recipes by name, in config order."""

    def __init__(self, recipes: list[Recipe]) -> None:
        if not recipes:
            raise ValueError("a recipe book needs at least one recipe")
        self._by_name = {r.name: r for r in recipes}

    @classmethod
    def single(cls, inspector: Inspector, locate: LocateConfig, roi: tuple[int, int, int, int] | None) -> RecipeBook:
        """No recipes configured: the model section's inspector for every part."""
        return cls([Recipe(None, inspector, locate, roi)])

    @classmethod
    def load(cls, specs: list[RecipeSpec], threads: int = 1) -> RecipeBook:
        """Every recipe loaded, threshold-checked and self-checked; RecipeError names the first that cannot run."""
        return cls([spec.load(threads) for spec in specs])

    @property
    def configured(self) -> bool:
        """True when recipes are configured (not the model section alone)."""
        return None not in self._by_name

    @property
    def names(self) -> list[str]:
        return [n for n in self._by_name if n is not None]

    def get(self, name: str | None) -> Recipe | None:
        return self._by_name.get(name)

    def __getitem__(self, name: str | None) -> Recipe:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Recipe]:
        return iter(self._by_name.values())
