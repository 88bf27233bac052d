"""mnist-ladder: climb from a 6.4M-parameter baseline to a <8k-parameter CNN at 99.4%.

From Python (a notebook or a script), the same engine as the `ladder` command:

    import mnist_ladder as ml
    ml.steps()                      # every step by name: the built-in ladder, then yours
    s6 = ml.step("step6")           # a step by name, STEP.VARIANT, or the path of a step file
    r = ml.fit(s6, seed=1)          # trains, records the run in runs/ladder.db; r.model, r.history
    r.plot()                        # the 2x2 curves
    print(ml.compare("step6", "steps/mystep.py"))   # what a change bought, over seeds
"""

from . import steps  # a callable module: ml.steps() lists every step
from .api import FitResult, compare, fit, step
from .core.version import __version__
from .engine.augment import Augment
from .engine.models import Conv, Net, count_parameters
from .steps import Recipe, Step, Variant

__all__ = [
    "Augment",
    "Conv",
    "FitResult",
    "Net",
    "Recipe",
    "Step",
    "Variant",
    "__version__",
    "compare",
    "count_parameters",
    "fit",
    "step",
    "steps",
]
