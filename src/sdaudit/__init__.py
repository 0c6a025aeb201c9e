"""sdaudit: extract and audit the internal representations of latent-diffusion U-Nets.

The small public API::

    from sdaudit import load_model, extract, open_store
    model = load_model("tiny")                       # or "sd15", a folder, a .safetensors file
    report = extract(model, "photos/", "reps.zarr", layers="paper")
    store = open_store("reps.zarr")
    x = store.read("up_blocks[1].upsamplers[0]")     # (N, C, n, n) float16
"""

__version__ = "0.1.0"

_LAZY = {"extract": ".extraction", "load_model": ".models", "open_store": ".store"}


def __getattr__(name: str):
    """Import the API on first use, so that ``import sdaudit`` (and the CLI's start) stays light."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'sdaudit' has no attribute '{name}'")


__all__ = ["__version__", "extract", "load_model", "open_store"]
