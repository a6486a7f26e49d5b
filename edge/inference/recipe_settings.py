"""The `recipes` section of config.yaml (edge.config composes it): several products on one line.

A recipe names a bundle, its threshold policy and where its part is found; the PLC (OPC UA
RecipeRequest) or MQTT ({prefix}/recipe/set) selects one between two parts
(edge.inference.recipes, docs/plc.md). Rules between sections (a model.bundle beside
recipes, a recipe's roi without inspect.locate: roi) are `cross_checks`, reported by edge.config at
their line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field, field_validator, model_validator

from edge.config_file import Strict, short
from edge.inference.policy import parse_policy

RECIPE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_recipe_name(v: str) -> str:
    """A recipe name travels over MQTT, OPC UA and into file names: a short plain token."""
    if not isinstance(v, str) or not RECIPE_NAME.fullmatch(v):
        raise ValueError(f"recipe name {short(v)}: 1-64 characters of A-Z a-z 0-9 _ . -, starting with a letter "
                         "or digit")
    return v


class RecipeSection(Strict):
    """One product on this line: its bundle, threshold policy and where to find the part."""

    bundle: Path = Field(description="bundle folder (model.tflite + model.json) for this product")
    threshold: float | None = Field(None, gt=0, le=1, description="override the bundle's threshold (checked "
                                    "against the bundle's validation scores, as model.threshold is)")
    threshold_policy: str | None = Field(None, description="cost:R or recall:X: the threshold chosen by this policy "
                                         "on the bundle's recorded validation scores (then checked as an override); "
                                         "null = the bundle's threshold")
    accept_validation_escapes: int | None = Field(None, ge=0)
    min_diameter_px: int | None = Field(None, gt=0, le=16384, description="rim diameter range of this product "
                                        "in frame pixels; null = inspect's")
    max_diameter_px: int | None = Field(None, gt=0, le=16384)
    roi: tuple[int, int, int, int] | None = Field(None, description="trigger mode with inspect.locate: roi: this "
                                                  "product's fixture; null = inspect.roi")
    description: str = Field("", max_length=200)

    @field_validator("threshold_policy")
    @classmethod
    def _policy(cls, v: str | None) -> str | None:
        if v is not None:
            parse_policy(v)  # PolicyError is a ValueError: reported at its line
        return v

    @field_validator("roi")
    @classmethod
    def _roi(cls, v: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
        if v is not None and (v[2] <= 0 or v[3] <= 0 or min(v[:2]) < 0 or max(v) > 65535):
            raise ValueError(f"{list(v)}: x, y must be >= 0 and width, height > 0 (frame pixels, at most 65535)")
        return v

    @model_validator(mode="after")
    def _one_threshold(self) -> RecipeSection:
        if self.threshold is not None and self.threshold_policy is not None:
            raise ValueError("threshold and threshold_policy: give one (a fixed threshold, or a policy that "
                             "chooses it on the bundle's validation scores)")
        return self


class RecipesSection(Strict):
    start: str | None = Field(None, description="the recipe of a first start (null = the first listed); later "
                              "starts resume the last switch the journal recorded")
    products: dict[Annotated[str, AfterValidator(check_recipe_name)], RecipeSection] = Field(
        default_factory=dict, description="name -> recipe; empty = no recipes (the model section decides every part)")

    @property
    def first(self) -> str | None:
        return self.start if self.start is not None else next(iter(self.products), None)


def cross_checks(cfg: Any) -> list[tuple[tuple, str]]:
    """Rules between the recipes section and the others (`cfg`: edge.config.Config), each as (key
    path, message) so that edge.config reports it at its line."""
    problems: list[tuple[tuple, str]] = []
    products = cfg.recipes.products
    if cfg.recipes.start is not None and cfg.recipes.start not in products:
        known = ", ".join(products) or "none: recipes.products is empty"
        problems.append((("recipes", "start"), f"{cfg.recipes.start!r} is not a recipe in recipes.products ({known})"))
    if products:
        for key in ("bundle", "threshold", "accept_validation_escapes"):
            if key in cfg.model.model_fields_set:
                problems.append((("model", key), "set per recipe when recipes.products is not empty (the recipe "
                                 "in force decides every part); move it into each recipe"))
    for name, r in products.items():
        where = ("recipes", "products", name)
        if r.roi is not None and cfg.inspect.locate != "roi":
            problems.append((where + ("roi",), "a recipe's roi needs inspect.locate: roi (trigger mode)"))
        rim = cfg.inspect.locate_config(r.min_diameter_px, r.max_diameter_px)
        if rim.max_diameter < (lo := rim.min_diameter):
            hi = rim.max_diameter
            key = "max_diameter_px" if r.max_diameter_px is not None else "min_diameter_px"
            problems.append((where + (key,), f"rim diameter range {lo}..{hi} px is empty (the recipe's or inspect's)"))
    shadow_recipe = cfg.model.shadow_recipe
    if shadow_recipe is not None and shadow_recipe not in products:
        problems.append((("model", "shadow_recipe"), f"{shadow_recipe!r} is not a recipe in recipes.products"))
    if cfg.model.shadow is not None and products and shadow_recipe is None:
        problems.append((("model", "shadow"), "with recipes, name the recipe whose parts the candidate judges "
                         "(model.shadow_recipe)"))
    return problems
