"""The comparison's figures, drawn with matplotlib from measure.py's plain data.

Each function returns a Figure: a notebook shows it, `minicontainer compare` saves it.
"""
from __future__ import annotations

import io

import matplotlib

if not matplotlib.get_backend().lower().startswith(("module://", "nbagg", "widget", "ipympl")):
    matplotlib.use("Agg")            # no screen needed (CLI, CI); notebooks keep inline
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

MiB = 1024**2
COLORS = {"container": "#2a7ab9", "vm": "#d9622b"}


def start_time_figure(start_time: dict) -> Figure:
    """Start-to-exit of `true`, every run a dot, on a log axis: milliseconds vs seconds."""
    figure, axes = plt.subplots(figsize=(7, 3))
    for row, side in enumerate(("container", "vm")):
        times = start_time[side]
        axes.scatter(times, [row] * len(times), alpha=0.6, color=COLORS[side])
        axes.plot([sorted(times)[len(times) // 2]] * 2, [row - 0.25, row + 0.25], color="black")
    axes.set_xscale("log")
    axes.set_yticks([0, 1], ["container", f"VM ({start_time.get('vm_accel', '?')})"])
    axes.set_ylim(-0.6, 1.6)
    axes.set_xlabel("start to exit of `true`, seconds (log scale; bar: median)")
    axes.set_title("Starting a container vs booting a VM, same image")
    figure.tight_layout()
    return figure


def memory_figure(scaling: dict, per_instance: dict | None = None) -> Figure:
    """Host memory used against the number of idle instances."""
    figure, axes = plt.subplots(figsize=(7, 3.5))
    for side, key in (("container", "containers"), ("vm", "vms")):
        points = scaling[key]
        axes.plot([n for n, _ in points], [used / MiB for _, used in points], "o-",
                  color=COLORS[side], label=f"{side}s")
    axes.set_xlabel("instances running (idle)")
    axes.set_ylabel("memory they cost the host, MiB\n(USS, + kernel memory)")
    if per_instance:
        axes.set_title(f"One container: {per_instance['container']['pss'] / MiB:.1f} MiB PSS; "
                       f"one VM: {per_instance['vm']['pss'] / MiB:.0f} MiB PSS")
    axes.legend()
    figure.tight_layout()
    return figure


def overprovision_figure(overprovision: dict) -> Figure:
    """Memory in use over time: containers sharing a budget vs VMs holding their RAM."""
    figure, axes = plt.subplots(figsize=(7, 3.5))
    containers, vms = overprovision["containers"], overprovision["vms"]
    axes.plot([t for t, _ in containers["timeline"]], [m / MiB for _, m in containers["timeline"]],
              color=COLORS["container"], label=f"{containers['k']} containers (one budget)")
    axes.plot([t for t, _ in vms["timeline"]], [m / MiB for _, m in vms["timeline"]],
              color=COLORS["vm"], label=f"{vms['k']} VMs (QEMU RSS)")
    axes.axhline(containers["budget"] / MiB, color=COLORS["container"], linestyle="--",
                 label="the containers' shared budget")
    axes.axhline(containers["sum_of_limits"] / MiB, color="grey", linestyle=":",
                 label="sum of the containers' limits")
    axes.set_xlabel("seconds")
    axes.set_ylabel("memory in use, MiB")
    axes.set_title("Over-provisioning: budgets that add up to more than there is")
    axes.legend(fontsize="small")
    figure.tight_layout()
    return figure


def layer_sharing_figure(disk: dict[str, int]) -> Figure:
    """Disk taken by an image's layers (stored once) beside each container's own upper
    layer; `disk` maps a bar's label to bytes, the layers first."""
    figure, axes = plt.subplots(figsize=(7, 3))
    labels, kib = list(disk), [disk[label] / 1024 for label in disk]
    colors = ["grey"] + [COLORS["container"]] * (len(labels) - 1)
    bars = axes.barh(labels, kib, color=colors)
    axes.bar_label(bars, [f"{k:,.0f} KiB" for k in kib], padding=3)
    axes.invert_yaxis()                       # the layers on top, as overlayfs draws them
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlim(0, max(kib) * 1.3)
    axes.set_xlabel("disk used, KiB (du)")
    axes.set_title("One image, two containers: the layers once, an upper each")
    figure.tight_layout()
    return figure


def show(figure: Figure, alt: str) -> None:
    """Show `figure` in a notebook as a PNG with alt text (read aloud by a screen
    reader, kept in the HTML handout), and close it."""
    from IPython.display import Image, display
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    display(Image(data=buffer.getvalue(), format="png", alt=alt))


def integer_ticks(axis) -> None:
    """Ticks only at whole numbers on `axis` (axes.xaxis or axes.yaxis): for counts."""
    axis.set_major_locator(MaxNLocator(integer=True))
