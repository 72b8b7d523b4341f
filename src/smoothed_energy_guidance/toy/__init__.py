"""The project's own small text-to-image model: procedural scenes, training, and quality evaluation."""
