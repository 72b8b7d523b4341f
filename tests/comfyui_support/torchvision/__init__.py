"""Import-only stand-in for torchvision, for tests that run ComfyUI's sampling core on a CPU-only torch.

ComfyUI imports ``torchvision.transforms`` at module load but its sampling core never calls it; a user's real
ComfyUI install has the real torchvision, and this package is only put on ``sys.path`` when none is installed.
"""

from . import transforms  # noqa: F401
