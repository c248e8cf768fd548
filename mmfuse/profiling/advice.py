"""Turn a :class:`~mmfuse.profiling.steps.ProfileReport` into a table and into settings that would
help (the cache, workers, the feature cache)."""

from __future__ import annotations

from mmfuse.profiling.steps import ProfileReport

__all__ = ["format_report", "suggestions"]

#: a phase above this share of the step is worth acting on
_NOTABLE = 0.10


def _share(seconds: float, report: ProfileReport) -> str:
    return f"{100 * seconds / report.wall:5.1f}%" if report.wall > 0 else "    -"


def format_report(report: ProfileReport) -> str:
    per_step = 1000 * report.wall / max(report.steps, 1)
    lines = [
        f"{report.steps} steps, {report.samples} samples on {report.device}: "
        f"{report.samples_per_sec:.1f} samples/s, {per_step:.1f} ms/step",
        f"{'phase':<28}{'seconds':>9}{'share':>8}",
        f"{'data wait':<28}{report.data_wait:>9.3f}{_share(report.data_wait, report):>8}",
        f"{'forward':<28}{report.forward:>9.3f}{_share(report.forward, report):>8}",
    ]
    for name, seconds in sorted(report.modules_forward.items()):
        lines.append(f"{'  ' + name:<28}{seconds:>9.3f}{_share(seconds, report):>8}")
    lines.append(f"{'backward':<28}{report.backward:>9.3f}{_share(report.backward, report):>8}")
    encoders = sum(report.encoders_backward.values())
    for name, seconds in sorted(report.encoders_backward.items()):
        lines.append(f"{'  ' + name:<28}{seconds:>9.3f}{_share(seconds, report):>8}")
    rest = max(report.backward - encoders, 0.0)
    lines.append(f"{'  fusion + tasks':<28}{rest:>9.3f}{_share(rest, report):>8}")
    lines.append(f"{'optimizer step':<28}{report.optimizer:>9.3f}{_share(report.optimizer, report):>8}")
    lines.append(f"peak memory: {report.peak_memory_mb:.0f} MiB ({report.peak_memory_kind})")
    if report.cache_hits or report.cache_misses:
        total = report.cache_hits + report.cache_misses
        lines.append(f"sample cache (main process): {report.cache_hits}/{total} hits")
    settings = ", ".join(f"{key}={value}" for key, value in report.settings.items())
    lines.append(f"settings: {settings}")
    return "\n".join(lines)


def suggestions(report: ProfileReport) -> list[str]:
    """Concrete recipe changes that the measured shares say would help, most useful first."""
    advice: list[str] = []
    settings = report.settings
    if report.data_wait_share > _NOTABLE:
        waiting = f"the step waits for data {100 * report.data_wait_share:.0f}% of the time"
        if settings.get("data.cache") == "off":
            advice.append(f"{waiting}: cache preprocessed samples (data.cache=auto, or disk to keep them across runs)")
        workers = int(settings.get("data.num_workers", 0))
        cpus = int(settings.get("cpus", 1))
        if workers == 0 and cpus > 1:
            advice.append(f"{waiting}: preprocess in worker processes (data.num_workers={min(cpus - 1, 8)}; the cache then uses disk)")
        elif settings.get("data.cache") != "off":
            advice.append(
                f"{waiting} with the cache on: the profile's first pass over the data fills it; "
                f"profile more steps (--steps) to see the warm cache, or keep it across runs (data.cache=disk)"
            )
    frozen_forward = sum(report.modules_forward.get(f"encoder/{name}", 0.0) for name in report.frozen_encoders)
    if report.frozen_encoders and settings.get("data.feature_cache") == "off" and frozen_forward > _NOTABLE * report.wall:
        names = ", ".join(report.frozen_encoders)
        advice.append(
            f"frozen encoder(s) {names} take {100 * frozen_forward / report.wall:.0f}% of the step recomputing the same "
            f"outputs: data.feature_cache=auto computes them once"
        )
    if not advice:
        if settings.get("trainer.precision") == "fp32" and report.device.startswith("cuda"):
            advice.append("the step is compute-bound: trainer.precision=bf16 halves activation memory and speeds up matmuls")
        else:
            advice.append("the step is compute-bound: the data path keeps up; a larger data.batch_size may raise samples/s")
    return advice
