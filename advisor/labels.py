"""Names of limits, objectives, provenances and risks, in English, looked up in the catalog when shown.

The report, the TUI and any other place that shows them to a user call `_()` (or a
translation's `gettext`) on these at display time, so the language can be chosen at run time.
"""

from __future__ import annotations

from typing import Any, Callable

from advisor.i18n import N_

Gettext = Callable[[str], str]


TASK_NAMES = {"classification": N_("classification"), "detection": N_("detection")}
CONSTRAINT_NAMES = {
    "max_latency_ms": N_("max latency"),
    "min_throughput": N_("min throughput"),
    "min_accuracy": N_("min accuracy"),
    "max_drop": N_("max drop from dense"),
    "max_relative_drop": N_("max relative drop"),
    "max_weight_mb": N_("max weight memory"),
}
CONSTRAINT_UNITS = {
    "max_latency_ms": "ms",
    "min_throughput": N_("/s"),
    "min_accuracy": N_("points"),
    "max_drop": N_("points"),
    "max_relative_drop": N_("% of dense"),
    "max_weight_mb": "MB",
}
OBJECTIVE_NAMES = {
    "accuracy": N_("highest accuracy"),
    "latency": N_("lowest latency"),
    "sparsity": N_("highest sparsity"),
    "cost": N_("lowest cost"),
}
PROVENANCE_NAMES = {"measured": N_("measured"), "published": N_("published"), "predicted": N_("predicted")}
LATENCY_SOURCE_TEXT = {
    "result": N_("measured for this result"),
    "same_sparsity": N_("measured for the same model, sparsity and pattern with a magnitude mask"),
    "dense_kernels": N_("the dense model's timing: this runtime ran dense kernels only, so the zeros do not change it"),
    "dense": N_("measured for the dense model"),
    "published_dense": N_("published for the same architecture and input size, dense"),
}


def risk_text(risk: dict[str, Any], t: Gettext) -> str:
    """Return one risk as a sentence in the language of `t`."""
    code = risk["code"]
    if code == "accuracy_predicted":
        return t("Accuracy is predicted by the regressor, not measured.")
    if code == "interval_crosses_limit":
        names = ", ".join(t(CONSTRAINT_NAMES[c]) for c in risk["constraints"])
        return t("The low end of the prediction's 80 % interval ({low:.1f} %) misses {names}.").format(
            low=risk["low"], names=names)
    if code == "accuracy_published":
        return t("Accuracy was measured by others, on their data and setup: {source}.").format(source=risk["source"])
    if code == "latency_missing":
        return t("No latency measured on {runtime} at batch {batch} on this hardware profile.").format(
            runtime=risk["runtime"], batch=risk["batch_size"])
    if code == "latency_inferred":
        return t("Latency not measured for this result: {how}.").format(how=t(LATENCY_SOURCE_TEXT[risk["source"]]))
    if code == "latency_published":
        return t("Latency published by {citation}, on other hardware and software.").format(citation=risk["citation"])
    if code == "no_measured_speedup":
        return t("No speed-up over dense measured on {runtime}: the saving is memory or storage, not compute.").format(
            runtime=risk["runtime"])
    if code == "unreliable_timing":
        return t("The timing varied by {spread:.0%} while it was measured, so its latency is unreliable; time it "
                 "again on an idle machine.").format(spread=risk["spread"])
    if code == "small_eval_set":
        return t("Accuracy from {n} evaluation images: its 95 % interval is ±{width:.1f} points.").format(
            n=risk["eval_size"], width=risk["half_width"])
    if code == "few_detection_images":
        return t("Box mAP from {n} evaluation images, fewer than {minimum}: it moves with the sample of images, and "
                 "no interval is computed for it.").format(n=risk["eval_size"], minimum=risk["minimum"])
    if code == "thin_margin":
        return t("Little headroom on {name}: {headroom:.2f} {unit}.").format(
            name=t(CONSTRAINT_NAMES[risk["constraint"]]), headroom=risk["headroom"],
            unit=t(CONSTRAINT_UNITS[risk["constraint"]]))
    return risk["detail"]
