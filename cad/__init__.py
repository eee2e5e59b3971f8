"""Core CAD package: sandboxed execution, geometry and metrics, rendering, datasets."""
