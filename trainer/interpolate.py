"""Weight interpolation between a base model and its fine-tune (WiSE-FT, Wortsman et al. 2022).

Fine-tuning on a few dozen new-line images costs the old line a few parts (docs/commissioning.md);
a model part way along the straight line between the base's weights and the fine-tune's keeps
more of the base's behaviour and some of the new line's gain. `alpha` is the fine-tune's share:
1 is the fine-tune itself, 0 the base. Both must come from the same architecture, the fine-tune
started from the base (weights far apart in another basin do not interpolate).
"""

from __future__ import annotations

import keras
import numpy as np

from trainer.options import OutputError

AUTO = "auto"
AUTO_ALPHAS = (1.0, 0.75, 0.5, 0.25)  # tried in this order by `auto`: the most adaptation first


class InterpolationError(OutputError):
    """An interpolation that cannot be made as asked."""


def parse_interpolation(text: str) -> tuple[float, ...]:
    """The fine-tune's shares to try, in order: `auto` (AUTO_ALPHAS) or one number in (0, 1]."""
    if str(text).strip() == AUTO:
        return AUTO_ALPHAS
    try:
        alpha = float(text)
    except ValueError:
        alpha = float("nan")
    if not 0.0 < alpha <= 1.0:
        raise InterpolationError(f"--interpolate {text!r}: the fine-tune's share of the weights is a number "
                                 f"in (0, 1] (1: the fine-tune alone) or '{AUTO}' (the largest of "
                                 f"{', '.join(f'{a:g}' for a in AUTO_ALPHAS)} that keeps the old line's bar)")
    return (alpha,)


def blend(base: keras.Model, tuned: keras.Model, alpha: float) -> keras.Model:
    """A new model with (1 - alpha) x base + alpha x tuned, weight by weight. Batch-norm moving
    statistics are blended too, but belong to neither model: recalibrate them on the images
    the fine-tune saw before using the result (trainer.loop.recalibrate_batchnorm)."""
    if alpha == 1.0:
        return tuned
    b, t = base.get_weights(), tuned.get_weights()
    if len(b) != len(t) or any(x.shape != y.shape for x, y in zip(b, t)):
        raise InterpolationError("the base and the fine-tuned model do not have the same weights; "
                                 "only a fine-tune of the base interpolates with it")
    model = keras.models.clone_model(tuned)
    model.set_weights([(1.0 - alpha) * x + alpha * y if np.issubdtype(y.dtype, np.floating) else y
                       for x, y in zip(b, t)])
    return model
