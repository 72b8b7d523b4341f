"""Empty: ComfyUI's sampling core imports this module and never uses it."""
