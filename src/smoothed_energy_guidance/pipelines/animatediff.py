"""SEG pipelines for AnimateDiff: an SD 1.x UNet with motion modules (``UNetMotionModel``).

The UNet folds the frames into its batch, so its spatial self-attentions see one frame per row; SEG
gathers each sample's frames and blurs their queries over the (frames, h, w) grid: σ within each frame,
``seg_temporal_sigma`` along the frames. The motion modules (attention along frames) are not SEG layers.
Default layers ``["mid"]``, as for images.
"""

from __future__ import annotations

from diffusers import AnimateDiffPipeline, AnimateDiffVideoToVideoPipeline

from .call import SegCallMixin


class AnimateDiffSEGPipeline(SegCallMixin, AnimateDiffPipeline):
    """AnimateDiff text-to-video with SEG."""


class AnimateDiffSEGVideoToVideoPipeline(SegCallMixin, AnimateDiffVideoToVideoPipeline):
    """AnimateDiff video-to-video with SEG."""
