from ..engine.augment import SEED_AUGMENT
from ..engine.step import Recipe, SeedResults, Step
from .step4_capacity import build

STEP = Step(
    name="step5",
    title="Image augmentation",
    target=(
        "Add image augmentation: rotation, random affine (rotation, shear, translation, "
        "scale) and brightness/contrast jitter",
        "Same network as Step 4",
    ),
    build=build,
    recipe=Recipe(lr=0.01, momentum=0.9, augment=SEED_AUGMENT),
    analysis=(
        "The model under-fits, as it should: the training data is now harder than the test data.",
        "Test accuracy improves but stays around 99.2-99.3: the model needs a little more "
        "capacity towards the end, and a learning rate that settles.",
    ),
    params=6_124,
    seed=SeedResults(
        6_124,
        (
            96.46,
            98.18,
            98.36,
            98.54,
            98.73,
            98.77,
            99.14,
            99.04,
            98.95,
            99.12,
            99.11,
            99.18,
            99.02,
            99.20,
            99.32,
        ),
        best_train=97.61,
    ),
)
