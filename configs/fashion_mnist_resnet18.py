"""The shipped base network: ResNet-18 of width 16 on Fashion-MNIST.

checkpoints/fashion_mnist_resnet18 was produced by
  python scripts/train_base.py --config configs/fashion_mnist_resnet18.py --workdir DIR \
      --config.train.export_dir=checkpoints/fashion_mnist_resnet18
"""

from gati_jax.config import base_config


def get_config():
    """Returns the config of the shipped Fashion-MNIST ResNet-18."""
    config = base_config()
    config.data.name = "fashion_mnist"
    config.model.name = "resnet18"
    config.model.width = 16
    config.train.epochs = 8
    return config
