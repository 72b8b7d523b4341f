"""The SEG mathematics every host shares, importing only torch: the blur (``blur``), the token layouts of
query tensors (``tokens``), the layer grammar (``layers``), the settings and the combination rule
(``guidance``) and the explicit call context (``context``). Hosts — the diffusers hooks and pipelines, the
Modular Diffusers guider — adapt it; they only say where their model keeps these things."""
