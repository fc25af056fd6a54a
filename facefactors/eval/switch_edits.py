"""Switch edits: for methods whose latent parts hold attribute values (IFcVAE-GAN's y), set a
part to a value and decode; and the edit success rate of Creswell et al. (Tables 1-2).

A method takes part when it exposes ``switch_parts`` (part name -> AttributeSpec) and
``switch_code(part, value, n)`` (the code that means ``value``: a number in [0, 1] for a binary
attribute, graded edits in between; a class index for a categorical one). An edit replaces only
those parts; every other part keeps its encoded value.

Edit success is judged by an independent classifier trained on real training images (the
evaluation oracle, ``eval/oracle.py``): for every target value k of an attribute, the test images
are encoded, y is set to k, the result decoded and read back. ``success_rate`` is the share read
as k among the images whose true label is not k (real edits), ``success_rate_all`` the share over
all images (the paper edits every test image both ways), ``unedited_rate`` the share of the plain
reconstructions of the same images read as k (the control: near 0 for a faithful model).
Reconstruction MSE is measured on images scaled to [0, 1], like ``eval/reconstruction.py``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from facefactors.data.specs import AttributeSpec, ImageDataset, to_float_image
from facefactors.errors import FacefactorsError
from facefactors.eval.latents import as_nchw_uint8, decode_uint8, encode_images
from facefactors.eval.reconstruction import to_unit
from facefactors.latent import Latent


def switch_parts(model) -> dict[str, AttributeSpec]:
    """The model's value parts (part -> AttributeSpec); a FacefactorsError if it has none."""
    parts = getattr(model, "switch_parts", None)
    if not parts or not hasattr(model, "switch_code"):
        raise FacefactorsError(f"method {getattr(model, 'name', type(model).__name__)!r} has no parts that hold "
                               "attribute values; switch edits need a method like ifcvae_gan (use the SVM edit "
                               "direction instead)")
    return dict(parts)


def parse_value(spec: AttributeSpec, value: Any) -> float | int:
    """A user's value for ``spec``: a class name ('yes', 'smile'), a class index, or for a binary
    attribute any number in [0, 1]."""
    if isinstance(value, str):
        text = value.strip()
        if text in spec.classes:
            return spec.classes.index(text) if spec.kind != "binary" else float(spec.classes.index(text))
        try:
            value = float(text)
        except ValueError:
            raise FacefactorsError(f"{spec.name!r} has no class {text!r}; classes: {', '.join(spec.classes)}"
                                   + (" (or a number in [0, 1])" if spec.kind == "binary" else "")) from None
    v = float(value)
    if spec.kind == "binary":
        if not 0.0 <= v <= 1.0:
            raise FacefactorsError(f"{spec.name!r} is binary: its value must lie in [0, 1], got {value!r}")
        return v
    if not v.is_integer() or not 0 <= int(v) < spec.num_classes:
        raise FacefactorsError(f"{spec.name!r} value {value!r} is not a class index 0..{spec.num_classes - 1} "
                               f"({', '.join(spec.classes)})")
    return int(v)


def parse_switch_values(model, items: str | Sequence[str] | Mapping[str, Any]) -> dict[str, float | int]:
    """Edit targets from ``{"glasses": 0}``, ``["glasses=0", "smile=yes"]`` or ``"glasses=0,smile=1"``."""
    parts = switch_parts(model)
    if isinstance(items, Mapping):
        pairs = list(items.items())
    else:
        if isinstance(items, str):
            items = [t for t in items.split(",") if t.strip()]
        pairs = []
        for item in items:
            if "=" not in item:
                raise FacefactorsError(f"edit {item!r} is not of the form attribute=value (e.g. glasses=0)")
            k, v = item.split("=", 1)
            pairs.append((k.strip(), v))
    if not pairs:
        raise FacefactorsError("no attribute to edit")
    out = {}
    for name, value in pairs:
        if name not in parts:
            raise FacefactorsError(f"attribute {name!r} has no value part in this model; switchable: "
                                   f"{', '.join(parts)}")
        out[name] = parse_value(parts[name], value)
    return out


def switch_latent(model, z: Latent, values: Mapping[str, float | int]) -> Latent:
    """``z`` with each named value part set to its value (every row); other parts untouched."""
    parts = switch_parts(model)
    new = {}
    for name, value in values.items():
        if name not in parts:
            raise FacefactorsError(f"part {name!r} holds no attribute value; switchable: {', '.join(parts)}")
        code = model.switch_code(name, value, z.batch_size)
        new[name] = code.to(device=z[name].device, dtype=z[name].dtype).reshape(z[name].shape)
    return z.replace(**new)


def switch_edit(model, images, values: Mapping[str, float | int], batch_size: int = 256,
                device: str | torch.device = "cpu") -> torch.Tensor:
    """Encode uint8 images (N, C, H, W), set the value parts, decode: uint8 (N, C, H, W).
    This is what ``facefactors edit`` needs for switch methods (several attributes at once)."""
    z = encode_images(model, as_nchw_uint8(images), batch_size, device)
    return decode_uint8(model, switch_latent(model, z, values), batch_size, device)


def enlarge(grid: np.ndarray, cell: int, min_cell: int = 48) -> np.ndarray:
    """Nearest-neighbour enlarge a grid of tiny images so figures stay legible."""
    k = max(1, -(-min_cell // max(cell, 1)))
    return grid if k == 1 else np.repeat(np.repeat(grid, k, axis=0), k, axis=1)


def _targets(spec: AttributeSpec) -> list[int]:
    return list(range(spec.num_classes))


def switch_edit_success(model, ds: ImageDataset, indices, oracle, attributes: Sequence[str] | None = None,
                        batch_size: int = 256, device: str | torch.device = "cpu",
                        log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Edit success per attribute and target value, judged by ``oracle`` (``predict(uint8 NCHW) ->
    {attribute: class indices}``), plus the reconstruction MSE of the same images.

    Returns ``{"n": images, "reconstruction_mse": ..., "attributes": {attr: {"targets": {class name:
    {"success_rate", "success_rate_all", "unedited_rate", "n"}}, "min_success_rate",
    "mean_success_rate"}}}``.
    """
    parts = switch_parts(model)
    attributes = list(attributes or parts)
    idx = np.asarray(indices, np.int64).reshape(-1)
    if idx.size == 0:
        raise FacefactorsError("switch edit success: no images given")
    images = ds.images[torch.from_numpy(idx)]
    z = encode_images(model, images, batch_size, device)
    rec = decode_uint8(model, z, batch_size, device)
    mse = float(((to_unit(to_float_image(rec)) - to_unit(to_float_image(images))) ** 2).mean())
    rec_pred = oracle.predict(rec)
    out: dict[str, Any] = {"n": int(idx.size), "reconstruction_mse": mse, "attributes": {}}
    for attr in attributes:
        if attr not in parts:
            raise FacefactorsError(f"attribute {attr!r} has no value part in this model; switchable: "
                                   f"{', '.join(parts)}")
        if attr not in rec_pred:
            raise FacefactorsError(f"the evaluation classifier does not predict {attr!r} "
                                   f"(it predicts {', '.join(rec_pred)})")
        spec = parts[attr]
        truth = ds.labels[attr].cpu().numpy()[idx] if attr in ds.labels else None
        targets = {}
        for k in _targets(spec):
            value = float(k) if spec.kind == "binary" else k
            edited = decode_uint8(model, switch_latent(model, z, {attr: value}), batch_size, device)
            pred = np.asarray(oracle.predict(edited)[attr]).reshape(-1)
            real = np.ones(len(idx), bool) if truth is None else truth != k
            entry = {"success_rate_all": float(np.mean(pred == k)), "n": int(real.sum()),
                     "success_rate": float(np.mean(pred[real] == k)) if real.any() else None,
                     "unedited_rate": float(np.mean(rec_pred[attr][real] == k)) if real.any() else None}
            targets[spec.classes[k]] = entry
            if log:
                log(f"  switch edit {attr} -> {spec.classes[k]}: success {entry['success_rate']} "
                    f"(all {entry['success_rate_all']:.3f}, unedited {entry['unedited_rate']})")
        rates = [t["success_rate"] for t in targets.values() if t["success_rate"] is not None]
        out["attributes"][attr] = {"targets": targets,
                                   "min_success_rate": float(min(rates)) if rates else None,
                                   "mean_success_rate": float(np.mean(rates)) if rates else None}
    return out


def switch_edit_grid(model, images, attribute: str, values: Sequence[float | int] | None = None, gap: int = 2,
                     batch_size: int = 256, device: str | torch.device = "cpu") -> np.ndarray:
    """Rows: originals, reconstructions, then one row per value of ``attribute`` (default: every
    class; for a binary attribute 0 and 1). uint8 (H, W, C)."""
    from facefactors.viz.grids import image_grid, to_hwc

    spec = switch_parts(model).get(attribute)
    if spec is None:
        raise FacefactorsError(f"attribute {attribute!r} has no value part in this model")
    values = list(values) if values is not None else [float(k) if spec.kind == "binary" else k
                                                      for k in _targets(spec)]
    x = as_nchw_uint8(images)
    z = encode_images(model, x, batch_size, device)
    rows = [list(to_hwc(x)), list(to_hwc(decode_uint8(model, z, batch_size, device)))]
    for v in values:
        rows.append(list(to_hwc(decode_uint8(model, switch_latent(model, z, {attribute: v}), batch_size, device))))
    return image_grid(rows, gap)


def switch_edit_report(model, ds: ImageDataset, out_dir, oracle, max_images: int = 1000, grid_images: int = 8,
                       seed: int = 0, batch_size: int = 256, device: str | torch.device = "cpu",
                       log: Callable[[str], None] | None = None) -> tuple[dict[str, Any], dict[str, Path]]:
    """The whole switch-edit evaluation for a run: success rates on (up to ``max_images``) test
    images and one ``figures/switch_<attribute>.png`` per attribute. Returns (metrics, figures)."""
    from facefactors.io import save_png

    test = np.asarray(ds.split("test"), np.int64)
    rng = np.random.default_rng([seed, 41])
    idx = np.sort(rng.choice(test, size=min(max_images, len(test)), replace=False))
    metrics = switch_edit_success(model, ds, idx, oracle, batch_size=batch_size, device=device, log=log)
    figures: dict[str, Path] = {}
    show = ds.images[torch.from_numpy(idx[:grid_images])]
    for attr in switch_parts(model):
        path = Path(out_dir) / "figures" / f"switch_{attr}.png"
        save_png(path, enlarge(switch_edit_grid(model, show, attr, batch_size=batch_size, device=device),
                                ds.image_size))
        figures[f"switch_{attr}"] = path
    return metrics, figures
