"""`mnist_ladder.augment`, the import path step files use (`ladder new` writes it): the same
module object as `mnist_ladder.engine.augment`, so its classes are the engine's own."""

import sys

from .engine import augment

sys.modules[__name__] = augment
