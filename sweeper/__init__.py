"""A Hydra-configured sweep runner for CIFAR-10 vision experiments."""
