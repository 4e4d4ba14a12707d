"""The paper's ablations on CIFAR-10 with projector diagnostics: ``python recipes/ablation.py [--train_samples N]``.

Arms (all CE + 2 x feature loss, the ``srd`` preset of ``hf_projkd.METHOD_PRESETS``, so that only the feature term
differs from the ``ce`` reference; the CRD protocol of ``recipes/configs/crd.yaml`` for everything else):

- normalisation: none / L2 / batch norm, with a linear projector and the LogSum loss;
- projector: linear / MLP, with batch norm and LogSum;
- loss: L2 (MSE) / smooth-L1 / LogSum, with batch norm and a linear projector.

The batch-norm + linear + LogSum arm (SRD) is shared by the three groups. Every arm starts from the same student
and projector initialisation, sees the same images in the same order and the same augmentations: the random crops
and flips are drawn ONCE (one view per image and epoch), and the teacher's outputs on those views are computed
once and carried by the batches (``DistillationTrainer`` takes ``teacher_logits`` / ``teacher_features`` from a
batch instead of running a teacher). Writes ``<prefix>.md`` (tables), ``<prefix>.json`` (results and diagnostic
histories) and the PNGs into ``--output_dir`` (default: benchmarks/results).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from torch.utils.data import Dataset as TorchDataset  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402

from hf_projkd import DistillationArguments, DistillationTrainer, create_student, load_image_classifier  # noqa: E402
from hf_projkd.callbacks import add_projector_diagnostics  # noqa: E402
from hf_projkd.cli import read_config_file  # noqa: E402
from hf_projkd.config import method_preset  # noqa: E402
from hf_projkd.data.cifar import (  # noqa: E402
    CifarCollator,
    CifarTensorDataset,
    DecodedImages,
    DecodedSplits,
    load_decoded_splits,
    random_crop_flip,
)
from hf_projkd.families import adapter_for  # noqa: E402
from hf_projkd.models import CIFAR100_MEAN, CIFAR100_STD  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plotting import plot_correlation, plot_correlation_matrices, plot_singular_values  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PROTOCOL = ROOT / "recipes" / "configs" / "crd.yaml"
DEFAULTS = {
    "data": str(SHARED / "data" / "cifar10-jpeg"),
    "teacher": str(SHARED / "weights" / "cifar10-resnet" / "cifar10_resnet56.safetensors"),
    "output_dir": str(ROOT / "benchmarks" / "results"),
}
STUDENT_STATS = (CIFAR100_MEAN, CIFAR100_STD)

#: Feature-term settings of each arm; everything else is shared.
ARMS: dict[str, dict[str, str]] = {
    "srd (bn, linear, logsum)": {"feature_norm": "batchnorm", "projector": "linear", "feature_loss": "logsum"},
    "norm none": {"feature_norm": "none", "projector": "linear", "feature_loss": "logsum"},
    "norm l2": {"feature_norm": "l2", "projector": "linear", "feature_loss": "logsum"},
    "projector mlp": {"feature_norm": "batchnorm", "projector": "mlp", "feature_loss": "logsum"},
    "loss l2": {"feature_norm": "batchnorm", "projector": "linear", "feature_loss": "l2"},
    "loss smooth_l1": {"feature_norm": "batchnorm", "projector": "linear", "feature_loss": "smooth_l1"},
}
CE_ARM = "ce (no teacher)"
SRD_ARM = "srd (bn, linear, logsum)"
#: The paper's three ablations as (title, varied field, arms in plotting order).
GROUPS: dict[str, tuple[str, list[str]]] = {
    "normalisation": ("feature_norm", ["norm none", "norm l2", SRD_ARM]),
    "projector": ("projector", [SRD_ARM, "projector mlp"]),
    "loss": ("feature_loss", ["loss l2", "loss smooth_l1", SRD_ARM]),
}


@dataclass
class AblationOptions:
    """Budget and inputs of the ablation (the recipe ``recipes/ablation.py`` parses these from the CLI)."""

    data: str | None = field(
        default=None, metadata={"help": "CIFAR-10 parquet folder (e.g. ../shared/data/cifar10-jpeg) or Hub id."}
    )
    teacher: str | None = field(
        default=None, metadata={"help": "Teacher folder/id or CIFAR-10 ResNet .safetensors file."}
    )
    output_dir: str = field(default="ablation_output", metadata={"help": "Where the table, JSON and PNGs go."})
    prefix: str = field(default="ablation_cifar10", metadata={"help": "File name prefix of the outputs."})
    student: str = field(default="resnet8", metadata={"help": "CIFAR architecture of the from-scratch student."})
    arms: list[str] = field(
        default_factory=lambda: [CE_ARM, *ARMS], metadata={"help": f"Arms to run: {[CE_ARM, *ARMS]}."}
    )
    train_samples: int = field(default=4000, metadata={"help": "Fixed random train subset (seed 0)."})
    eval_samples: int = field(default=2000, metadata={"help": "First N test images."})
    epochs: int = field(default=3, metadata={"help": "Epochs = pre-drawn augmented views per training image."})
    seeds: list[int] = field(
        default_factory=lambda: [0],
        metadata={"help": "Seeds of the student/projector init and data order (one run per arm and seed); the "
                  "views are drawn once, with the first seed."},
    )
    every_n_steps: int = field(default=10, metadata={"help": "Diagnostics period (optimizer steps)."})
    batch_size: int = field(default=64, metadata={"help": "Per-device train batch (CRD protocol: 64)."})
    learning_rate: float = field(default=0.05, metadata={"help": "SGD learning rate (CRD protocol: 0.05)."})
    command: str = field(default="", metadata={"help": "The command line, written into the markdown."})
    replot: bool = field(
        default=False,
        metadata={"help": "Train nothing: rewrite the markdown and PNGs from <output_dir>/<prefix>.json."},
    )

    def __post_init__(self) -> None:
        if not self.replot and (not self.data or not self.teacher):
            raise ValueError(
                f"The ablation needs data and teacher, got data={self.data!r}, teacher={self.teacher!r}: pass the "
                "CIFAR-10 folder/id and the teacher (e.g. a cifar10_resnet56.safetensors file)."
            )
        unknown = [a for a in self.arms if a != CE_ARM and a not in ARMS]
        if unknown:
            raise ValueError(f"Unknown ablation arms {unknown}: expected some of {[CE_ARM, *ARMS]}.")
        if not self.seeds:
            raise ValueError("Pass at least one seed (--seeds 0).")
        if self.epochs < 1 or self.train_samples < 2 * self.batch_size:
            raise ValueError(
                f"Need epochs >= 1 and train_samples >= 2 batches ({2 * self.batch_size}), got epochs={self.epochs}, "
                f"train_samples={self.train_samples}."
            )


# -- pre-drawn views and cached teacher outputs -------------------------------------------------------------------
def draw_views(images: DecodedImages, epochs: int, seed: int, padding: int = 4) -> DecodedImages:
    """``epochs`` random crop+flip views of every image, drawn once (CRD augmentation), stacked epoch-major."""
    generator = torch.Generator().manual_seed(seed)
    views = [random_crop_flip(images.pixels, padding, True, generator) for _ in range(epochs)]
    return DecodedImages(torch.cat(views), images.labels.repeat(epochs))


@torch.no_grad()
def teacher_outputs(
    teacher: torch.nn.Module, images: DecodedImages, collator: CifarCollator, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher (logits, pooled features) for every image, with the teacher's own input normalisation."""
    adapter = adapter_for(teacher.eval())
    dataset = CifarTensorDataset(images)
    logits, features = [], []
    for start in range(0, len(dataset), batch_size):
        batch = collator(dataset.__getitems__(list(range(start, min(start + batch_size, len(dataset))))))
        inputs = batch.get("teacher_pixel_values", batch["pixel_values"]).contiguous(memory_format=torch.channels_last)
        out = adapter(inputs)
        logits.append(out.logits.float())
        features.append(out.features.float())
    return torch.cat(logits), torch.cat(features)


class CachedTeacherDataset(TorchDataset):
    """Pre-drawn views with their teacher outputs: items ``pixel_values`` (uint8), ``labels``, ``teacher_*``."""

    def __init__(self, views: DecodedImages, logits: torch.Tensor, features: torch.Tensor) -> None:
        if not len(views) == logits.shape[0] == features.shape[0]:
            raise ValueError(
                f"{len(views)} views but {logits.shape[0]} teacher logits and {features.shape[0]} features: compute "
                "the teacher outputs on exactly these views (teacher_outputs(teacher, views, collator))."
            )
        self.views, self.logits, self.features = views, logits, features

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        index = torch.as_tensor(indices, dtype=torch.long)
        rows = zip(self.views.pixels[index], self.views.labels[index], self.logits[index], self.features[index],
                   strict=True)
        return [{"pixel_values": p, "labels": y, "teacher_logits": t, "teacher_features": f} for p, y, t, f in rows]


# -- one arm ------------------------------------------------------------------------------------------------------
@dataclass
class AblationSetup:
    """What every arm shares: data, cached teacher outputs on the pre-drawn views, statistics."""

    data: DecodedSplits
    train: CachedTeacherDataset
    teacher_feature_dim: int
    info: dict[str, Any]


def prepare(options: AblationOptions, log: Callable[[str], None] = print) -> AblationSetup:
    """Load data and teacher, draw the views, compute the teacher outputs once, and the teacher's top-1."""
    start = time.perf_counter()
    data = load_decoded_splits(options.data, max_train_samples=options.train_samples,
                               max_eval_samples=options.eval_samples)
    teacher = load_image_classifier(options.teacher).to(memory_format=torch.channels_last)
    declared = adapter_for(teacher).input_normalization()
    collator = CifarCollator(*STUDENT_STATS, *(declared.values if declared else STUDENT_STATS))
    views = draw_views(data.train, options.epochs, options.seeds[0])
    logits, features = teacher_outputs(teacher, views, collator)
    eval_logits, _ = teacher_outputs(teacher, data.eval, collator)
    info = {
        "teacher": Path(options.teacher).stem,
        "teacher_top1": round(100.0 * (eval_logits.argmax(-1) == data.eval.labels).float().mean().item(), 2),
        "teacher_agreement_on_views": round(100.0 * (logits.argmax(-1) == views.labels).float().mean().item(), 2),
        "train_samples": len(data.train),
        "eval_samples": len(data.eval),
        "views": len(views),
        "teacher_feature_dim": features.shape[1],
        "prepare_seconds": round(time.perf_counter() - start, 1),
    }
    log(json.dumps(info))
    return AblationSetup(data, CachedTeacherDataset(views, logits, features), features.shape[1], info)


def arm_arguments(name: str, options: AblationOptions, output_dir: str, seed: int,
                  teacher_feature_dim: int | None = None) -> DistillationArguments:
    """CRD protocol + the ``srd`` preset (or ``ce``) + the arm's feature settings, one epoch over all views."""
    protocol = {k: v for k, v in read_config_file(PROTOCOL).items() if k != "method"}
    values = {**protocol, **method_preset("ce" if name == CE_ARM else "srd"), **ARMS.get(name, {})}
    values.update(
        output_dir=output_dir, num_train_epochs=1, seed=seed, use_cpu=True, disable_tqdm=True,
        logging_steps=options.every_n_steps, per_device_train_batch_size=options.batch_size,
        learning_rate=options.learning_rate, save_strategy="no", teacher_feature_dim=teacher_feature_dim,
    )
    return DistillationArguments(**values)


def run_arm(name: str, setup: AblationSetup, options: AblationOptions, seed: int) -> dict[str, Any]:
    """Train one arm from the shared initialisation, evaluate it, and return accuracy + diagnostics."""
    start = time.perf_counter()
    data = setup.data
    torch.manual_seed(seed)  # same student (and projector) initialisation in every arm
    student = create_student(options.student, data.class_names, 32, image_mean=STUDENT_STATS[0],
                             image_std=STUDENT_STATS[1], cifar_first=True).to(memory_format=torch.channels_last)
    with tempfile.TemporaryDirectory() as folder:
        args = arm_arguments(name, options, folder, seed, None if name == CE_ARM else setup.teacher_feature_dim)
        trainer = DistillationTrainer(student, None, args, train_dataset=setup.train,
                                      eval_dataset=CifarTensorDataset(data.eval),
                                      data_collator=CifarCollator(*STUDENT_STATS))
        callback = None if name == CE_ARM else add_projector_diagnostics(trainer, options.every_n_steps)
        output = trainer.train()
        metrics = trainer.evaluate()
    train_logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    return {
        "arm": name,
        "seed": seed,
        **({"feature_norm": "-", "projector": "-", "feature_loss": "-"} if name == CE_ARM else ARMS[name]),
        "top1": round(metrics["eval_top1"], 2),
        "top5": round(metrics["eval_top5"], 2),
        "steps": output.global_step,
        "train_loss": round(output.training_loss, 4),
        "last_train_log": train_logs[-1] if train_logs else {},
        "wall_seconds": round(time.perf_counter() - start, 1),
        "history": callback.history_dicts() if callback else [],
        "last_correlation": callback.last_correlation.tolist() if callback and callback.last_correlation is not None
        else None,
    }


# -- the whole ablation ---------------------------------------------------------------------------------------------
def machine() -> str:
    return (
        f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, python {platform.python_version()}"
    )


def run_ablation(options: AblationOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every arm; after each, rewrite ``<prefix>.json``, ``<prefix>.md`` and the PNGs in ``output_dir``."""
    start = time.perf_counter()
    output_dir = Path(options.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    setup = prepare(options, log)
    report: dict[str, Any] = {"options": asdict(options), "setup": setup.info, "machine": machine(), "runs": []}
    for seed in options.seeds:  # seed-major: a partial report already has every arm once
        for name in options.arms:
            result = run_arm(name, setup, options, seed)
            report["runs"].append(result)
            log(json.dumps({k: v for k, v in result.items() if k not in ("history", "last_correlation")}))
            report["total_minutes"] = round((time.perf_counter() - start) / 60, 1)
            report["complete"] = len(report["runs"]) == len(options.arms) * len(options.seeds)
            write_outputs(report, output_dir, options.prefix)
    return report


def replot(output_dir: str | Path, prefix: str) -> list[Path]:
    """Rewrite the markdown and figures from a saved ``<prefix>.json`` (the recorded command stays the same)."""
    path = Path(output_dir) / f"{prefix}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the ablation first (without --replot).")
    return write_outputs(json.loads(path.read_text()), Path(output_dir), prefix)


def write_outputs(report: dict[str, Any], output_dir: Path, prefix: str) -> list[Path]:
    """JSON (everything, histories included), the PNGs, and the markdown table that links them."""
    json_path = output_dir / f"{prefix}.json"
    json_path.write_text(json.dumps(report, indent=1))
    runs = _first_seed_runs(report)
    images: dict[str, Path] = {}
    for group, (_, arms) in GROUPS.items():
        present = {a: runs[a]["history"] for a in arms if a in runs and runs[a]["history"]}
        if len(present) >= 2:  # a group with one arm run compares nothing
            images[f"spectrum_{group}"] = plot_singular_values(present, output_dir / f"{prefix}_spectrum_{group}.png")
    histories = {a: r["history"] for a, r in runs.items() if r["history"]}
    if histories:
        images["correlation"] = plot_correlation(histories, output_dir / f"{prefix}_correlation.png")
        matrices = {a: r["last_correlation"] for a, r in runs.items() if r["last_correlation"] is not None}
        images["matrices"] = plot_correlation_matrices(matrices, output_dir / f"{prefix}_correlation_matrices.png")
    md_path = output_dir / f"{prefix}.md"
    md_path.write_text(markdown(report, {k: p.name for k, p in images.items()}))
    return [json_path, md_path, *images.values()]


def _first_seed_runs(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The runs of the first seed by arm: their diagnostics are the ones plotted and tabulated."""
    first = report["options"]["seeds"][0]
    return {r["arm"]: r for r in report["runs"] if r["seed"] == first}


def _top1(report: dict[str, Any], arm: str) -> str:
    scores = [r["top1"] for r in report["runs"] if r["arm"] == arm]
    mean = sum(scores) / len(scores)
    return f"{mean:.2f}" if len(scores) == 1 else f"{mean:.2f} ({' / '.join(f'{v:.2f}' for v in scores)})"


def _delta_vs_srd(report: dict[str, Any], arm: str) -> str:
    """Top-1 minus the SRD arm's, seed by seed: both share initialisation and batches, so the pairing removes
    most of the seed-to-seed spread that the plain means carry."""
    srd = {r["seed"]: r["top1"] for r in report["runs"] if r["arm"] == SRD_ARM}
    deltas = [r["top1"] - srd[r["seed"]] for r in report["runs"] if r["arm"] == arm and r["seed"] in srd]
    if arm == SRD_ARM or not deltas:
        return "-"
    mean = sum(deltas) / len(deltas)
    if len(deltas) == 1:
        return f"{mean:+.2f}"
    return f"{mean:+.2f} ({' / '.join(f'{v:+.2f}' for v in deltas)})"


def _final(run: dict[str, Any], key: str) -> str:
    history = run["history"]
    if not history:
        return "-"
    last = history[-1]
    value = last["summary"].get(key) if key in last["summary"] else last.get(key)
    if value is None:
        return "-"
    return f"{100 * value:.0f} %" if key == "sv_near_zero_share" else f"{value:.3g}"


def markdown(report: dict[str, Any], images: dict[str, str]) -> str:
    """The results page: command, machine, budget, one table per ablation group, and the figures."""
    options, setup = report["options"], report["setup"]
    runs = _first_seed_runs(report)
    seeds = options["seeds"]
    status = "complete" if report.get("complete") else "IN PROGRESS (partial)"
    lines = [
        "# Ablations on CIFAR-10: normalisation, projector, feature loss (CPU budget)",
        "",
        f"Command: `{options['command'] or '(not recorded)'}`",
        "",
        f"Machine: {report['machine']}.",
        "",
        f"Budget and setup: teacher {setup['teacher']} (top-1 {setup['teacher_top1']:.2f} % on the "
        f"{setup['eval_samples']} evaluation images), student {options['student']} from scratch, "
        f"{len(seeds)} seed(s) ({', '.join(str(v) for v in seeds)}; diagnostics and figures: seed {seeds[0]}), "
        f"{setup['train_samples']} training images (fixed random subset) x {options['epochs']} "
        f"pre-drawn crop+flip views = {setup['views']} samples, one pass in batches of {options['batch_size']}, "
        f"evaluation on the first {setup['eval_samples']} test images with the final weights. CRD protocol (SGD "
        f"0.9, lr {options['learning_rate']}, wd 5e-4, lr x0.1 at 62.5/75/87.5 % of the steps). Loss: CE + 2 x "
        "feature loss (the `srd` preset, no KL term), only the feature settings differ; every arm starts from the "
        "same initialisation and sees the same batches, with teacher outputs computed once "
        f"({setup['prepare_seconds']:.0f} s). Diagnostics every {options['every_n_steps']} steps. "
        f"Total wall time {report.get('total_minutes', 0):.1f} min ({status}).",
        "",
        "Columns: top-1 on the eval images (mean, and per seed when several); its difference to the SRD arm "
        "of the same seed (same initialisation and batches: a paired comparison); the projector's final "
        "singular-value spectrum (effective rank, share of values below 1 % of the largest, smallest/largest "
        "value; for the MLP, its last layer); the mean "
        "absolute input/output correlation of the projector on the last measured batch (diagonal / off-diagonal); "
        "linear R2: share of the projector's standardised output variance a linear map of its input explains "
        "(512 recent inputs through the final projector; 1 for any full-rank linear projector).",
        "",
    ]
    columns = ("arm", "norm", "projector", "loss", "top-1 (%)", "vs SRD (pts)", "eff. rank", "near-zero",
               "sv min / top", "corr diag / off", "linear R2", "steps", "wall s")
    header = "| " + " | ".join(columns) + " |"
    rule = "|" + "---|" * len(columns)
    for group, (varied, arms) in GROUPS.items():
        if sum(arm in runs for arm in arms) < 2:
            continue
        lines += [f"## {group} (varies `{varied}`)", "", header, rule]
        for arm in [CE_ARM, *arms] if CE_ARM in runs else arms:
            if arm in runs:
                lines.append(_row(runs[arm], _top1(report, arm), _delta_vs_srd(report, arm)))
        lines.append("")
    for key, title in (
        ("spectrum_normalisation", "Singular values of W over training, normalisation arms"),
        ("spectrum_projector", "Singular values over training, linear vs MLP projector (MLP: last layer)"),
        ("spectrum_loss", "Singular values over training, loss arms"),
        ("correlation", "Projector input/output correlation over training, all arms"),
        ("matrices", "Final |input/output correlation| matrices"),
    ):
        if key in images:
            lines += [f"![{title}]({images[key]})", ""]
    return "\n".join(lines)


def _row(run: dict[str, Any], top1: str, delta: str) -> str:
    sv = "-" if not run["history"] else f"{_final(run, 'sv_min')} / {_final(run, 'sv_top')}"
    corr = "-" if not run["history"] else f"{_final(run, 'corr_diag')} / {_final(run, 'corr_offdiag')}"
    return (
        f"| {run['arm']} | {run['feature_norm']} | {run['projector']} | {run['feature_loss']} | {top1} | {delta} | "
        f"{_final(run, 'effective_rank')} | {_final(run, 'sv_near_zero_share')} | {sv} | {corr} | "
        f"{_final(run, 'linear_r2')} | {run['steps']} | "
        f"{run['wall_seconds']:.0f} |"
    )


def main(argv: list[str] | None = None) -> dict | list[Path]:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(AblationOptions)
    parser.set_defaults(**DEFAULTS)
    (options,) = parser.parse_args_into_dataclasses(argv)
    if options.replot:
        return replot(options.output_dir, options.prefix)
    options.command = options.command or "python recipes/ablation.py " + " ".join(shlex.quote(a) for a in argv)
    return run_ablation(options)


if __name__ == "__main__":
    main()
