"""The engine: MNIST in memory, augmentation, the network builders, the C kernels and their
binding, memory layouts, and the training loop. Everything here determines what a run
learns, so its sources are part of every run's identity (`engine.identity`)."""
