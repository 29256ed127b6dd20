"""The interactive demo: its corpus index, its model choices and the rendering of its results."""
