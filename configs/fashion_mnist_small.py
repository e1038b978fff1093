"""A small data set: 1,300 training and 500 test images of Fashion-MNIST, a ResNet-18.

What a user with a small image data set of their own meets, with the defaults that scale
with the data: validation is 600 of the 1,300 (data.validation_min; the base network trains
on the other 700), train.min_steps raises the 8 epochs of 5 steps to 400 (2,000 steps), and
the planner tunes on 300 requests. Those certify a bound of eps 0.01 at 95% only for plans
that never err, so the bound here is 0.03 (at most 4 disagreements in 300). Two commands:
  python scripts/train_base.py --config configs/fashion_mnist_small.py --workdir DIR/base
  python scripts/train_caches.py --config configs/fashion_mnist_small.py --workdir DIR
"""

from gati_jax.config import base_config


def get_config():
    """Returns the small Fashion-MNIST config."""
    config = base_config()
    config.data.name = "fashion_mnist"
    config.data.train_subset = 1300
    config.data.test_subset = 500
    config.model.name = "resnet18"
    config.model.width = 16
    config.train.export_dir = "checkpoints/fashion_mnist_small"
    config.caches.checkpoint = "checkpoints/fashion_mnist_small"
    config.planner.eps = 0.03
    config.planner.sweep_eps = (0.05,)
    # The test split has 500 images: streams of 500 requests do not repeat any.
    config.workload.length = 500
    return config
