"""`mnist_ladder.models`, the import path step files use (`ladder new` writes it): the same
module object as `mnist_ladder.engine.models`, so its classes are the engine's own."""

import sys

from .engine import models

sys.modules[__name__] = models
