"""Datasets: every loader returns an ImageDataset; ``make_dataset`` builds one from a config dict."""
from __future__ import annotations

from typing import Any, Mapping

from facefactors.data.specs import AttributeSpec, Batch, ImageDataset
from facefactors.errors import FacefactorsError

DATASET_NAMES = ("synthfaces", "digits")
_SYNTH_KEYS = ("n", "n_identities", "seed", "test_fraction", "heldout_identities", "noise")
VALID_KEYS = ("name", "path", "size", "channels", *_SYNTH_KEYS, "derived")


def make_dataset(spec: Mapping[str, Any]) -> ImageDataset:
    """Build a dataset from a config mapping, e.g. ``{"name": "synthfaces", "size": 64, "n": 30000}``.

    ``path`` loads a saved SynthFaces directory instead of generating one (its image size must
    match ``size`` when both are given). Keys that do not apply to digits are ignored for it.
    ``derived`` (SynthFaces) adds binary attributes computed from others, e.g. ``[smile]``.
    """
    if not isinstance(spec, Mapping):
        raise FacefactorsError(f"dataset spec must be a mapping, got {type(spec).__name__}")
    unknown = [k for k in spec if k not in VALID_KEYS]
    if unknown:
        raise FacefactorsError(f"unknown dataset key(s) {', '.join(map(repr, unknown))}; "
                               f"valid keys: {', '.join(VALID_KEYS)}")
    name = spec.get("name")
    if name not in DATASET_NAMES:
        raise FacefactorsError(f"unknown dataset {name!r}; available: {', '.join(DATASET_NAMES)}")

    derived = spec.get("derived") or []
    if isinstance(derived, str) or not isinstance(derived, (list, tuple)):
        raise FacefactorsError(f"dataset key 'derived' must be a list of names, got {derived!r}")
    if name == "digits":
        from facefactors.data.digits import load_digits_dataset

        if derived:
            raise FacefactorsError(f"derived attributes ({', '.join(map(str, derived))}) exist for synthfaces only")

        kw = {k: spec[k] for k in ("size", "seed", "channels") if spec.get(k) is not None}
        if spec.get("test_fraction") is not None:
            kw["test_fraction"] = spec["test_fraction"]
        return load_digits_dataset(**kw)

    from facefactors.data import synthfaces

    if spec.get("channels") not in (None, 3):
        raise FacefactorsError(f"synthfaces images are RGB: channels={spec['channels']!r} must be 3")
    if spec.get("path"):
        ds = synthfaces.load(spec["path"])
        if spec.get("size") is not None and int(spec["size"]) != ds.image_size:
            raise FacefactorsError(f"dataset at {spec['path']} has {ds.image_size} px images "
                                   f"but the config asks for size={spec['size']}")
        return synthfaces.add_derived(ds, derived)
    kw = {k: spec[k] for k in ("size", *_SYNTH_KEYS) if spec.get(k) is not None}
    try:
        cfg = synthfaces.SynthFacesConfig(**kw)
        cfg = synthfaces.SynthFacesConfig(
            n=int(cfg.n), size=int(cfg.size), n_identities=int(cfg.n_identities), seed=int(cfg.seed),
            test_fraction=float(cfg.test_fraction), heldout_identities=int(cfg.heldout_identities),
            noise=float(cfg.noise))
    except (TypeError, ValueError) as e:
        raise FacefactorsError(f"bad synthfaces dataset setting: {e}") from None
    return synthfaces.add_derived(synthfaces.generate(cfg), derived)


__all__ = ["AttributeSpec", "Batch", "ImageDataset", "make_dataset", "DATASET_NAMES", "VALID_KEYS"]
