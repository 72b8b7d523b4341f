# ComfyUI shim for a pip-installed smoothed-energy-guidance: copy this file into ComfyUI/custom_nodes/.
from smoothed_energy_guidance.comfyui import *  # noqa: F401,F403
