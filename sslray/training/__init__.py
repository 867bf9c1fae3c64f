"""Training: the plain-PyTorch loop (`loop.fit`) and the one Ray Train entry point (`worker`).

`worker` is not imported here, so importing the loop never imports Ray.
"""

from sslray.training.loop import Trainer, fit

__all__ = ["Trainer", "fit"]
