"""Frames to part crops: camera sources, part location and tracking, the pixels the model sees."""
