"""The ``facefactors`` command line: data, train, evaluate, compare, ablate, encode, swap, interpolate,
methods, demo."""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from facefactors.errors import FacefactorsError


def _examples(text: str) -> str:
    return "example:\n" + textwrap.indent(textwrap.dedent(text).strip(), "  ")


def _split_config_args(items: list[str]) -> tuple[str | None, list[str]]:
    """First item is the config file unless it is a key=value override."""
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


def _unique_run_dir(base: Path) -> Path:
    if not base.exists():
        return base
    i = 2
    while Path(f"{base}-{i}").exists():
        i += 1
    return Path(f"{base}-{i}")


# ------------------------------------------------------------------------- verbs
def cmd_methods(args) -> int:
    from facefactors.methods import registry

    methods = registry.available()
    width = max(len(n) for n in methods)
    for name, cls in methods.items():
        print(f"{name:<{width}}  {cls.summary}")
    return 0


def cmd_data(args) -> int:
    from facefactors.data import synthfaces

    cfg = synthfaces.SynthFacesConfig(n=args.n, size=args.size, n_identities=args.n_identities, seed=args.seed,
                                      heldout_identities=args.heldout_identities)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise FacefactorsError(f"{out} exists and is not empty; choose another --out or pass --force")
    import time

    t0 = time.perf_counter()
    ds = synthfaces.generate(cfg)
    t1 = time.perf_counter()
    synthfaces.save(ds, out)
    print(f"wrote {len(ds)} SynthFaces images at {cfg.size}px to {out} "
          f"(generated in {t1 - t0:.1f} s; preview: {out / 'preview.png'})")
    return 0


def cmd_train(args) -> int:
    from facefactors.config import apply_overrides, build_dataclass, load_config, load_yaml, RunConfig
    from facefactors.train.trainer import Trainer

    config_path, overrides = _split_config_args(args.items)
    for o in overrides:
        if "=" not in o:
            raise FacefactorsError(f"expected key=value overrides after the config file, got {o!r}")
    if args.resume:
        if config_path is not None:
            raise FacefactorsError("--resume takes its config from the run directory; pass only overrides")
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise FacefactorsError(f"cannot resume {run_dir}: no config.yaml there")
        cfg = build_dataclass(RunConfig, apply_overrides(load_yaml(run_dir / "config.yaml"), overrides))
        Trainer(cfg, run_dir, resume=True).fit()
        return 0
    if config_path is None:
        raise FacefactorsError("train needs a config file (e.g. configs/autoencoder_synthfaces.yaml) or --resume RUN")
    cfg = load_config(config_path, overrides)
    run_dir = Path(args.out) if args.out else _unique_run_dir(Path("runs") / Path(config_path).stem)
    result = Trainer(cfg, run_dir).fit()
    if args.evaluate:
        return cmd_evaluate(argparse.Namespace(run=str(result.run_dir), device=args.device, overrides=[]))
    return 0


def cmd_evaluate(args) -> int:
    from facefactors.config import apply_overrides
    from facefactors.config import build_dataclass
    from facefactors.eval.evaluate import EvalConfig, evaluate
    from facefactors.runs import load_run

    run = load_run(args.run, device=args.device, weights=args.weights)
    eval_cfg = build_dataclass(EvalConfig, apply_overrides(dict(run.config.eval), args.overrides), "eval")
    metrics = evaluate(run.model, run.dataset, run.run_dir, eval_cfg, device=args.device, log=_quiet)
    print_headline(metrics)
    print(f"report: {run.run_dir / 'report.html'}")
    return 0


def print_headline(metrics: dict) -> None:
    from facefactors.eval.evaluate import headline_lines

    for line in headline_lines(metrics):
        print(f"  {line}")


def _quiet(msg: str) -> None:
    """Progress lines of the evaluator, shortened to its section headers."""
    if not msg.startswith(" "):
        print(msg, flush=True)


def cmd_compare(args) -> int:
    from facefactors.eval.compare import build_comparison

    parts = [p.strip() for p in args.parts.split(",") if p.strip()] if args.parts else None
    if args.grid_size < 1:
        raise FacefactorsError(f"--grid-size must be at least 1, got {args.grid_size}")
    out = build_comparison(args.runs, args.output, evaluate_missing=args.evaluate, parts=parts,
                           grid_size=args.grid_size, seed=args.seed, device=args.device, log=_quiet)
    print(f"wrote {out}")
    return 0


def cmd_ablate(args) -> int:
    import shlex

    from facefactors.eval.ablation import parse_vary, run_ablation
    from facefactors.runs import resolve_device

    for o in args.overrides:
        if "=" not in o:
            raise FacefactorsError(f"expected key=value overrides after the config file, got {o!r}")
    varies = [parse_vary(v) for v in args.vary]
    mode = "grid" if args.grid else "one-at-a-time"
    command = shlex.join(["facefactors", "ablate", args.config, *args.overrides,
                          *[x for v in args.vary for x in ("--vary", v)], "--" + mode,
                          *(["--out", args.out] if args.out else [])])
    result = run_ablation(args.config, varies, mode, args.out, args.overrides, str(resolve_device(args.device)),
                          command=command, eval_log=_quiet)
    print(result.table)
    print(f"wrote {result.markdown} and {result.html}")
    return 0


def cmd_encode(args) -> int:
    from facefactors.eval.latents import encode_split, save_latents
    from facefactors.runs import load_run

    run = load_run(args.run, device=args.device)
    idx = run.dataset.split(args.split)
    arrays = encode_split(run.model, run.dataset, idx, device=args.device)
    save_latents(args.output, arrays)
    parts = ", ".join(f"{k[5:]} ({v.shape[1]})" for k, v in arrays.items() if k.startswith("part/"))
    print(f"wrote {len(idx)} {args.split} latents to {args.output}: parts {parts}")
    return 0


def _load_uint8(run, paths: list[str]):
    """Image files of the run's size and channels as one uint8 (N, C, H, W) tensor (clear errors)."""
    import torch

    from facefactors.data.images import load_image

    return torch.stack([load_image(p, run.dataset.image_size, run.dataset.channels) for p in paths])


def _load_images(run, paths: list[str]):
    from facefactors.data.specs import to_float_image

    return to_float_image(_load_uint8(run, paths))


def cmd_swap(args) -> int:
    import torch

    from facefactors.data.images import save_image
    from facefactors.data.specs import to_uint8_image
    from facefactors.latent import swap
    from facefactors.runs import load_run

    run = load_run(args.run, device=args.device)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    x = _load_images(run, [args.source, args.donor]).to(args.device)
    with torch.no_grad():
        z = run.model.encode(x)
        out = run.model.decode(swap(z.index(slice(0, 1)), z.index(slice(1, 2)), parts))
    img = to_uint8_image(out)[0]
    if args.with_inputs:
        img = torch.cat([to_uint8_image(x[0:1])[0], to_uint8_image(x[1:2])[0], img], dim=2)
    save_image(args.output, img)
    print(f"wrote {args.output}: {args.source} with {', '.join(parts)} from {args.donor}")
    return 0


def cmd_edit(args) -> int:
    import torch

    from facefactors.data.images import save_image
    from facefactors.eval.editing import edit_image
    from facefactors.runs import load_run

    run = load_run(args.run, device=args.device)
    ds = run.dataset
    if args.part is not None and args.part not in run.model.part_names:
        raise FacefactorsError(f"unknown part {args.part!r}; the model's parts: {', '.join(run.model.part_names)}")
    images = _load_uint8(run, args.image)
    if args.attribute in (getattr(run.model, "switch_parts", None) or {}):
        # parts that hold attribute values (ifcvae_gan): set them, several at once with --set
        from facefactors.eval.switch_edits import parse_switch_values, switch_edit

        values = parse_switch_values(run.model, [f"{args.attribute}={args.value}", *args.set])
        edited = switch_edit(run.model, images, values, device=args.device)
        args.direction = "switch"
    else:
        if args.set:
            raise FacefactorsError(f"--set needs a method whose parts hold attribute values; {run.model.name!r} "
                                   "edits one attribute at a time along a direction")
        edited = edit_image(run.model, ds, images, args.attribute, args.value, part=args.part,
                            max_std=args.strength, overshoot=args.overshoot, kind=args.direction,
                            pairwise=not args.one_vs_rest, device=args.device, log=_quiet)
    out = torch.cat([torch.cat([images[i], edited[i]], dim=2) for i in range(len(images))], dim=1) \
        if args.with_inputs else torch.cat(list(edited), dim=1)
    save_image(args.output, out)
    print(f"wrote {args.output}: {len(images)} image(s) edited towards {args.attribute} = {args.value} "
          f"along the {args.direction} direction")
    return 0


def cmd_sample(args) -> int:
    from facefactors.eval.sampling import fewshot_transfer, fixed_s_samples
    from facefactors.io import save_png
    from facefactors.runs import load_run

    run = load_run(args.run, device=args.device)
    if args.prior or args.fitted:
        return _sample_new(run, args)
    if not args.part:
        raise FacefactorsError("give --part (the part kept fixed), or --prior / --fitted for wholly new images")
    if args.part not in run.model.part_names:
        raise FacefactorsError(f"unknown part {args.part!r}; the model's parts: {', '.join(run.model.part_names)}")
    if args.fewshot:
        grid, m = fewshot_transfer(run.model, run.dataset, args.part, seed=args.seed, device=args.device)
        save_png(args.output, grid)
        print(f"wrote {args.output}: transfer of {args.part} from classes never seen in training "
              + ", ".join(f"{k} {v:.3f}" for k, v in m.items() if isinstance(v, float)))
        return 0
    if args.image:
        images = _load_uint8(run, args.image)
    else:
        import numpy as np

        test = run.dataset.split("test")
        pick = np.random.default_rng(args.seed).choice(test, size=min(args.n, len(test)), replace=False)
        images = run.dataset.images[np.sort(pick)]
    grid, _ = fixed_s_samples(run.model, images, args.part, n_samples=args.samples, seed=args.seed,
                              device=args.device)
    save_png(args.output, grid)
    print(f"wrote {args.output}: row 0 the images, rows 1-{args.samples} random rest codes with each image's "
          f"{args.part}")
    return 0


def _sample_new(run, args) -> int:
    """New images: draws from the method's prior (--prior), or from a Gaussian fitted to the
    training codes (--fitted, which every method has)."""
    import numpy as np

    from facefactors.eval.evaluate import fitted_gaussian_samples, sample_images
    from facefactors.io import save_png
    from facefactors.eval.switch_edits import enlarge
    from facefactors.viz.grids import image_grid

    n = args.n * args.samples
    ds = run.dataset
    if args.fitted:
        images, what = fitted_gaussian_samples(run.model, ds, np.asarray(ds.split("train"), np.int64), n, args.seed,
                                               device=args.device), "a Gaussian fitted to the training codes"
    else:
        images, drawn = sample_images(run.model, ds, np.asarray(ds.split("test"), np.int64), n, args.seed,
                                      device=args.device)
        if images is None:
            raise FacefactorsError(f"method {run.config.model.method!r} has no prior to sample from; "
                                   "use --fitted (a Gaussian fitted to its training codes)")
        what = f"the prior of {', '.join(drawn)}" + ("" if set(drawn) == set(run.model.part_names)
                                                     else " (the other parts from random test images)")
    cells = [np.asarray(im.permute(1, 2, 0)) for im in images]
    grid = image_grid([cells[r * args.samples:(r + 1) * args.samples] for r in range(args.n)])
    save_png(args.output, enlarge(grid, ds.image_size))
    print(f"wrote {args.output}: {n} images decoded from {what}")
    return 0


def cmd_interpolate(args) -> int:
    import torch

    from facefactors.data.images import save_image
    from facefactors.data.specs import to_uint8_image
    from facefactors.latent import interpolate
    from facefactors.runs import load_run

    if args.steps < 2:
        raise FacefactorsError(f"--steps must be at least 2, got {args.steps}")
    run = load_run(args.run, device=args.device)
    parts = [p.strip() for p in args.part.split(",") if p.strip()]
    x = _load_images(run, [args.a, args.b]).to(args.device)
    alphas = torch.linspace(0, 1, args.steps).tolist()
    with torch.no_grad():
        z = run.model.encode(x)
        lats = interpolate(z.index(slice(0, 1)), z.index(slice(1, 2)), parts, alphas)
        frames = [to_uint8_image(run.model.decode(lat))[0] for lat in lats]
    save_image(args.output, torch.cat(frames, dim=2))
    print(f"wrote {args.output}: {args.steps} steps of {', '.join(parts)} from {args.a} to {args.b}")
    return 0


def cmd_demo(args) -> int:
    from facefactors.demo import run_demo

    return run_demo(quick=args.quick, out=Path(args.out), device=args.device)


# ------------------------------------------------------------------------- parser
class _IntermixedParser(argparse.ArgumentParser):
    """A verb parser that takes positionals after options (``train CFG --out R x=1``)."""

    _inner = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inner:
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facefactors", description="Learn, measure and use disentangled image "
                                "representations.", formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=_examples("facefactors demo --quick\nfacefactors methods"))
    sub = p.add_subparsers(dest="verb", metavar="VERB", parser_class=_IntermixedParser)
    sub.required = True
    fmt = argparse.RawDescriptionHelpFormatter

    s = sub.add_parser("methods", help="list the registered methods", formatter_class=fmt,
                       epilog=_examples("facefactors methods"))
    s.set_defaults(func=cmd_methods)

    s = sub.add_parser("data", help="generate a dataset on disk", formatter_class=fmt,
                       epilog=_examples("facefactors data synthfaces --out data/sf64 --size 64 --n 30000 --seed 0"))
    s.add_argument("dataset", choices=["synthfaces"])
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--n", type=int, default=30000, help="number of images")
    s.add_argument("--size", type=int, default=64, help="image size in pixels (32, 64, 128, ...)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--n-identities", type=int, default=100)
    s.add_argument("--heldout-identities", type=int, default=0, help="identities kept out of train/test")
    s.add_argument("--force", action="store_true", help="write into a non-empty folder")
    s.set_defaults(func=cmd_data)

    s = sub.add_parser("train", help="train a method from a YAML config", formatter_class=fmt,
                       epilog=_examples("""
                           facefactors train configs/autoencoder_synthfaces.yaml train.steps=2000 --out runs/ae1
                           facefactors train --resume runs/ae1 train.steps=4000
                           torchrun --nproc_per_node 2 -m facefactors train configs/autoencoder_synthfaces.yaml"""))
    s.add_argument("items", nargs="*", metavar="CONFIG|key=value", help="config file, then dotted overrides")
    s.add_argument("--out", help="run directory (default: runs/<config name>)")
    s.add_argument("--resume", metavar="RUN", help="continue the run in RUN from its latest checkpoint")
    s.add_argument("--evaluate", action="store_true", help="evaluate the run when training ends")
    s.add_argument("--device", default="cpu", help="device for --evaluate")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("evaluate", help="measure a trained run: metrics.json, figures, report.html",
                       formatter_class=fmt, epilog=_examples("facefactors evaluate runs/ae1\n"
                                                             "facefactors evaluate runs/ae1 n_pairs=512"))
    s.add_argument("run")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="evaluation settings (see EvalConfig)")
    s.add_argument("--device", default="cpu")
    s.add_argument("--weights", choices=("auto", "live", "ema"), default="auto",
                   help="auto: the averaged weights where the run kept them (train.ema), else the live ones")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("compare", help="compare evaluated runs side by side in one HTML page", formatter_class=fmt,
                       epilog=_examples("facefactors compare runs/aa1 runs/d2ae1 runs/ae1 -o comparison.html\n"
                                        "facefactors compare runs/ae1 runs/ae2 --evaluate --parts expression"))
    s.add_argument("runs", nargs="+", metavar="RUN", help="run directories (trained on the same dataset)")
    s.add_argument("-o", "--output", default="comparison.html", help="HTML file to write (default: comparison.html)")
    s.add_argument("--evaluate", action="store_true", help="evaluate runs that have no metrics.json yet")
    s.add_argument("--parts", help="comma-separated parts for the swap grids (default: every part all runs share)")
    s.add_argument("--grid-size", type=int, default=4, help="sources and donors per swap grid")
    s.add_argument("--seed", type=int, default=0, help="seed choosing the swap grids' test images")
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("ablate", help="train and evaluate config variants; write an ablation table",
                       formatter_class=fmt, epilog=_examples("""
                           facefactors ablate configs/adversarial_attributes_synthfaces.yaml \\
                               --vary method.dis=0,1 --vary method.hybrid=0,0.3 train.time_budget_min=10
                           facefactors ablate configs/autoencoder_digits.yaml --vary model.width=16,32 \\
                               --vary method.lr=1e-3,1e-4 --grid --out runs/ablate_ae"""))
    s.add_argument("config", help="base config file")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides applied to every variant")
    s.add_argument("--vary", action="append", required=True, metavar="KEY=V1,V2",
                   help="a config key and the values to try (repeatable; values parse like overrides)")
    mode = s.add_mutually_exclusive_group()
    mode.add_argument("--one-at-a-time", action="store_true",
                      help="the base plus one variant per value that differs from it (default)")
    mode.add_argument("--grid", action="store_true", help="every combination of the varied values")
    s.add_argument("--out", help="folder for the variant runs and the tables (default: runs/ablate_<config>)")
    s.add_argument("--device", default="auto", help="device for evaluation (training uses train.device)")
    s.set_defaults(func=cmd_ablate)

    s = sub.add_parser("encode", help="write a split's latents, labels and factors to .npz", formatter_class=fmt,
                       epilog=_examples("facefactors encode runs/ae1 --split test -o latents.npz"))
    s.add_argument("run")
    s.add_argument("--split", default="test")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=cmd_encode)

    s = sub.add_parser("swap", help="transfer latent parts from a donor image to a source image",
                       formatter_class=fmt, epilog=_examples(
                           "facefactors swap runs/ae1 --source a.png --donor b.png --parts expression,illumination "
                           "-o out.png"))
    s.add_argument("run")
    s.add_argument("--source", required=True)
    s.add_argument("--donor", required=True)
    s.add_argument("--parts", required=True, help="comma-separated part names")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--with-inputs", action="store_true", help="write source | donor | result side by side")
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=cmd_swap)

    s = sub.add_parser("edit", help="edit an attribute along a linear direction in latent space (SVM or class mean)",
                       formatter_class=fmt, epilog=_examples(
                           "facefactors edit runs/d2ae1 --image a.png --attribute glasses --value yes -o out.png\n"
                           "facefactors edit runs/d2ae1 --image a.png b.png --attribute expression --value smile "
                           "--direction mean --strength 4 --with-inputs -o smiles.png\n"
                           "facefactors edit runs/ifc1 --image a.png --attribute glasses --value 0 --set smile=1 -o out.png"))
    s.add_argument("run")
    s.add_argument("--image", nargs="+", required=True, help="image file(s) of the run's size")
    s.add_argument("--attribute", required=True, help="a categorical or binary attribute of the run's dataset")
    s.add_argument("--value", required=True, help="target class, by name or index")
    s.add_argument("--part", help="latent part to edit (default: rest if the attribute has no part of its own)")
    s.add_argument("--direction", default="svm", choices=["svm", "mean"],
                   help="max-margin SVM direction (D2AE 4.3) or the class-mean difference")
    s.add_argument("--strength", type=float, default=3.0, help="bound on the edit, in learned stds along the direction")
    s.add_argument("--overshoot", type=float, default=1.0,
                   help="target this many learned stds past the class's mean projection (0: the class mean)")
    s.add_argument("--one-vs-rest", action="store_true",
                   help="for attributes of 3+ classes, one direction per target class instead of the SVM of the "
                        "image's own class against the target")
    s.add_argument("--set", nargs="*", default=[], metavar="ATTR=VALUE",
                   help="further attributes to set at the same time (methods whose parts hold values: ifcvae_gan; "
                        "values may be fractional for graded edits)")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--with-inputs", action="store_true", help="write each original beside its edit")
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=cmd_edit)

    s = sub.add_parser("sample", help="decode random rest codes with fixed attribute parts, few-shot transfer, "
                       "or new images from the prior",
                       formatter_class=fmt, epilog=_examples(
                           "facefactors sample runs/cvae1 --part digit --n 8 --samples 6 -o samples.png\n"
                           "facefactors sample runs/cvae1 --part identity --fewshot -o unseen.png\n"
                           "facefactors sample runs/compact1 --prior --n 4 --samples 8 -o faces.png"))
    s.add_argument("run")
    s.add_argument("--part", help="the attribute part kept fixed (or transferred with --fewshot)")
    s.add_argument("--prior", action="store_true", help="wholly new images from the method's prior "
                   "(--n rows of --samples)")
    s.add_argument("--fitted", action="store_true", help="wholly new images from a Gaussian fitted to the "
                   "training codes (any method)")
    s.add_argument("--image", nargs="*", help="images whose part is kept (default: --n random test images)")
    s.add_argument("--n", type=int, default=8, help="random test images when no --image is given")
    s.add_argument("--samples", type=int, default=6, help="random rest codes per image")
    s.add_argument("--fewshot", action="store_true",
                   help="transfer the part of held-out classes (the 'unseen' split) onto test images")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=cmd_sample)

    s = sub.add_parser("interpolate", help="interpolate latent parts between two images into a strip",
                       formatter_class=fmt, epilog=_examples(
                           "facefactors interpolate runs/ae1 --a a.png --b b.png --part identity --steps 10 "
                           "-o strip.png"))
    s.add_argument("run")
    s.add_argument("--a", required=True)
    s.add_argument("--b", required=True)
    s.add_argument("--part", required=True, help="part name(s), comma-separated")
    s.add_argument("--steps", type=int, default=8)
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=cmd_interpolate)

    s = sub.add_parser("demo", help="generate SynthFaces, train, evaluate, write a report", formatter_class=fmt,
                       epilog=_examples("facefactors demo          # about 12 minutes on 2 CPU cores\n"
                                        "facefactors demo --quick  # about 2 minutes"))
    s.add_argument("--quick", action="store_true", help="a small, fast version (about 2 minutes)")
    s.add_argument("--out", default="runs/demo")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except FacefactorsError as e:
        print(f"facefactors: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("facefactors: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
