"""Clipper's model selection layer: policies (pure), combining, losses, per-app/context state."""
