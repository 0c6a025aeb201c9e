"""sdaudit: extract and audit the internal representations of latent-diffusion U-Nets.

The small public API::

    from sdaudit import AuditSettings, ExtractionSettings, audit, extract, load_model, open_store, read_results
    model = load_model("tiny")                       # or "sd15", a folder, a .safetensors file
    report = extract(model, "photos/", "reps.zarr", ExtractionSettings(timestep=50), layers="paper")
    store = open_store("reps.zarr")
    x = store.read("up_blocks[1].upsamplers[0]")     # (N, C, n, n) float16
    audit(model, "photos/", "audit-out", AuditSettings(protocol="paper"))
    results = read_results("audit-out")              # AuditResults: .table is a list of LayerRow
"""

__version__ = "0.1.0"

_LAZY = {"extract": ".extraction", "load_model": ".models", "open_store": ".store", "audit": ".audit",
         "AuditSettings": ".settings", "ExtractionSettings": ".settings", "read_results": ".audit_results",
         "SdauditError": ".errors"}


def __getattr__(name: str):
    """Import the API on first use, so that ``import sdaudit`` (and the CLI's start) stays light."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'sdaudit' has no attribute '{name}'")


__all__ = ["__version__", "AuditSettings", "ExtractionSettings", "SdauditError", "audit", "extract", "load_model",
           "open_store", "read_results"]
