"""The deep base network: CIFAR-style ResNet-56 of width 16 on Fashion-MNIST (29 stages).

Trains checkpoints/fashion_mnist_resnet56 with
  python scripts/train_base.py --config configs/fashion_mnist_resnet56.py --workdir DIR
and runs the main job on it with
  python scripts/train_caches.py --config configs/fashion_mnist_resnet56.py --workdir DIR
"""

from gati_jax.config import base_config


def get_config():
    """Returns the Fashion-MNIST ResNet-56 config (training and main job)."""
    config = base_config()
    config.data.name = "fashion_mnist"
    config.model.name = "resnet56"
    config.model.width = 16
    config.train.epochs = 10
    config.train.export_dir = "checkpoints/fashion_mnist_resnet56"
    config.caches.checkpoint = "checkpoints/fashion_mnist_resnet56"
    # Streams long enough for a 0.99 bound to mean something per window, and for online
    # learning to see whole scenes; camera-like video beside the label-level streams.
    config.workload.length = 5000
    config.workload.window = 500
    config.benchmark.workloads = ("uniform", "temporal", "shift", "video")
    config.benchmark.rounds = 2
    return config
