"""The comparison's figures, drawn with matplotlib from measure.py's plain data.

Each function returns a Figure: a notebook shows it, `minicontainer compare` saves it.
Every figure is finished by `finish()`, which gives it alt text, a sentence that says
what the picture shows in numbers, for a reader who cannot see it, and whole-number
ticks on any axis that counts things (no "2.5 containers").

Where the alt text goes: a PNG in a notebook output has no place for one (Jupyter's
image/png output and nbconvert's template ignore metadata such as `alt`, and nbconvert
fills every <img> without one with "No description has been provided"). So a
`DescribedFigure` also offers IPython an HTML form of itself, `<img alt="...">`: JupyterLab
and `make html` prefer text/html to image/png, so the handout's <img> carries our text,
which is what a screen reader reads. `python -m minicontainer.course.plots docs` saves the
instructor pack's stack diagram, with its alt text in the SVG's <title> and <desc>.
"""
from __future__ import annotations

import base64
import html
import io
import sys
from pathlib import Path

import matplotlib

if not matplotlib.get_backend().lower().startswith(("module://", "nbagg", "widget", "ipympl")):
    matplotlib.use("Agg")            # no screen needed (CLI, CI); notebooks keep inline
from matplotlib import pyplot as plt
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch
from matplotlib.ticker import MaxNLocator

from .. import cgroups, namespaces, security

MiB = 1024**2
COLORS = {"container": "#2a7ab9", "vm": "#d9622b"}


class DescribedFigure(Figure):
    """A matplotlib Figure that carries alt text and shows itself as an <img> with it."""

    alt_text = ""

    def _repr_html_(self) -> str:
        """The figure as a PNG <img> whose alt attribute is the figure's alt text."""
        png = io.BytesIO()
        self.savefig(png, format="png", bbox_inches="tight")
        data = base64.b64encode(png.getvalue()).decode()
        return f'<img src="data:image/png;base64,{data}" alt="{html.escape(self.alt_text)}">'


def described_subplots(figsize: tuple[float, float], **subplots) -> tuple[DescribedFigure, object]:
    """A DescribedFigure and its axes, as plt.subplots makes them."""
    return plt.subplots(figsize=figsize, FigureClass=DescribedFigure, **subplots)


def finish(figure: DescribedFigure, alt: str, counts: tuple[Axis, ...] = ()) -> DescribedFigure:
    """Give a figure its alt text and whole-number ticks on the axes that count, lay it out."""
    for axis in counts:
        axis.set_major_locator(MaxNLocator(integer=True))
    figure.alt_text = alt
    figure.tight_layout()
    return figure


def median(values: list[float]) -> float:
    """The middle value (the upper one of the two middles for an even count)."""
    return sorted(values)[len(values) // 2]


def start_time_figure(start_time: dict) -> Figure:
    """Start-to-exit of `true`, every run a dot, on a log axis: milliseconds vs seconds."""
    figure, axes = described_subplots((7, 3))
    for row, side in enumerate(("container", "vm")):
        times = start_time[side]
        axes.scatter(times, [row] * len(times), alpha=0.6, color=COLORS[side])
        axes.plot([median(times)] * 2, [row - 0.25, row + 0.25], color="black")
    accelerator = start_time.get("vm_accel", "?")
    axes.set_xscale("log")
    axes.set_yticks([0, 1], ["container", f"VM ({accelerator})"])
    axes.set_ylim(-0.6, 1.6)
    axes.set_xlabel("start to exit of `true`, seconds (log scale; bar: median)")
    axes.set_title("Starting a container vs booting a VM, same image")
    container, vm = start_time["container"], start_time["vm"]
    return finish(figure, f"Dot plot of start-to-exit times of `true` on a log scale: "
                          f"{len(container)} container runs, median {median(container):.3f} s; "
                          f"{len(vm)} VM boots under {accelerator}, median {median(vm):.2f} s.")


# Boot.qemu_start is the whole boot minus the guest's uptime: QEMU, its firmware, and
# the kernel copied in and unpacked before the guest's clock starts; not QEMU alone.
BOOT_PHASES = {"qemu_start": "before the guest's clock"}


def vm_start_figure(breakdown: dict, restore: dict) -> DescribedFigure:
    """A cold boot's phases (TCG, and KVM where it works) beside a restore from a
    snapshot, each until the guest answers: seconds, stacked bars."""
    figure, axes = described_subplots((7, 2.6))
    rows = [(f"cold boot ({accel})", boots[0]) for accel in ("tcg", "kvm")
            if (boots := breakdown[accel])]
    cold = restore["cold"]
    rows.append(("cold boot, until it answers",
                 {**cold, "answer": cold["answered"] - cold["total"]}))
    fastest = min(restore["restores"], key=lambda r: r["answered"])
    rows.append(("restored from a snapshot", {"restore": fastest["running"],
                                              "answer": fastest["answered"] - fastest["running"]}))
    phases = {"qemu_start": "#999999", "kernel": COLORS["vm"], "init": "#f2b48c",
              "restore": "#6a3d9a", "answer": "#2ca02c"}
    labelled = set()                       # each phase once in the legend
    for row, (_, times) in enumerate(rows):
        left = 0.0
        for phase, color in phases.items():
            if phase in times:
                label = None if phase in labelled else BOOT_PHASES.get(phase, phase)
                labelled.add(phase)
                axes.barh(row, times[phase], left=left, color=color, label=label)
                left += times[phase]
    axes.set_yticks(range(len(rows)), [label for label, _ in rows])
    axes.invert_yaxis()
    axes.set_xlabel("seconds from starting QEMU")
    verdict = ("" if breakdown["kvm_usable"] else
               "no KVM here: TCG times show emulation, not how fast a VM can start")
    axes.set_title(verdict or "booting vs restoring", fontsize="small")
    axes.legend(fontsize="x-small", ncol=5, loc="lower right")
    tcg = breakdown["tcg"][0]
    return finish(figure, f"Stacked bars: a cold TCG boot takes {tcg['total']:.2f} s (before "
                          f"the guest's clock: QEMU, firmware, kernel unpacking "
                          f"{tcg['qemu_start']:.2f}, kernel {tcg['kernel']:.2f}, init "
                          f"{tcg['init']:.2f}); the same guest restored from a snapshot answers "
                          f"after {fastest['answered']:.2f} s. {verdict}")


VM_PARTS = {"guest_ram_touched": ("the guest's RAM (touched)", "#d9622b"),
            "tcg_cache": ("TCG's translation cache", "#f0a070"),
            "qemu_itself": ("QEMU itself (code, heap, kernel file)", "#f7d0b5")}


def memory_figure(scaling: dict, per_instance: dict | None = None) -> Figure:
    """Host memory used against the number of idle instances: containers as a line, VMs
    as a stack of what their QEMU holds (guest RAM, TCG's cache, QEMU), their -m as a line.

    The title's numbers are the curves' first points, so title and curve agree
    (`per_instance` is accepted for older callers and not drawn).
    """
    figure, axes = described_subplots((7, 3.8))
    containers, vms = scaling["containers"], scaling["vms"]
    axes.plot([n for n, _ in containers], [used / MiB for _, used in containers], "o-",
              color=COLORS["container"], label="containers (USS + kernel memory)")
    parts = scaling.get("vm_parts")
    if parts:
        counts = [n for n, _ in parts]
        axes.stackplot(counts, *[[p[key] / MiB for _, p in parts] for key in VM_PARTS],
                       labels=[f"VMs: {label}" for label, _ in VM_PARTS.values()],
                       colors=[color for _, color in VM_PARTS.values()], alpha=0.9)
    else:
        axes.plot([n for n, _ in vms], [used / MiB for _, used in vms], "o-",
                  color=COLORS["vm"], label="VMs (PSS)")
    committed = scaling.get("vm_committed")
    if committed:
        axes.plot([n for n, _ in committed], [c / MiB for _, c in committed], "k--",
                  label="VMs' committed memory (-m each)")
    axes.set_xlabel("instances running (idle)")
    axes.set_ylabel("memory they cost the host, MiB")
    one_vm = parts[0][1] if parts else {"pss": vms[0][1]}
    split = (f" ({one_vm['guest_ram_touched'] / MiB:.0f} guest RAM, "
             f"{one_vm['tcg_cache'] / MiB:.0f} TCG cache, {one_vm['qemu_itself'] / MiB:.0f} QEMU)"
             if parts else "")
    axes.set_title(f"One container: {containers[0][1] / MiB:.1f} MiB; "
                   f"one VM: {one_vm['pss'] / MiB:.0f} MiB{split}", fontsize=9)
    axes.legend(fontsize="x-small", loc="upper left")
    last = {"containers": containers[-1], "vms": vms[-1]}
    promised = (f" (they were promised {committed[-1][1] / MiB:.0f} MiB)" if committed else "")
    return finish(figure, "Line plot of host memory against idle instances: "
                          f"{last['containers'][0]} containers cost "
                          f"{last['containers'][1] / MiB:.0f} MiB, "
                          f"{last['vms'][0]} VMs cost {last['vms'][1] / MiB:.0f} MiB{promised}; "
                          f"one container {containers[0][1] / MiB:.1f} MiB, one VM "
                          f"{one_vm['pss'] / MiB:.0f} MiB{split}.",
                  counts=(axes.xaxis,))


def overprovision_figure(overprovision: dict) -> Figure:
    """Memory in use over time: containers sharing a budget vs VMs holding their RAM;
    with an "overlapping" run, beside it the unhappy case: peaks at once, OOM kills."""
    unhappy = overprovision.get("overlapping")
    figure, all_axes = described_subplots((11 if unhappy else 7, 3.5), ncols=2 if unhappy else 1,
                                          squeeze=False)
    axes = all_axes[0][0]
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
    axes.set_title("Peaks in turn: budgets that add up to more than there is", fontsize=10)
    axes.legend(fontsize="small")
    peak = {side: max(m for _, m in runs["timeline"]) / MiB
            for side, runs in (("containers", containers), ("vms", vms))}
    alt = ("Line plot of memory in use over time: "
           f"{containers['k']} containers under one "
           f"{containers['budget'] / MiB:.0f} MiB budget (their limits add up to "
           f"{containers['sum_of_limits'] / MiB:.0f} MiB) peak at "
           f"{peak['containers']:.0f} MiB; {vms['k']} VMs peak at "
           f"{peak['vms']:.0f} MiB of QEMU RSS.")
    if unhappy:
        alt += " " + overlapping_panel(all_axes[0][1], unhappy)
    return finish(figure, alt)


def overlapping_panel(axes, run: dict) -> str:
    """Draw the peaks-at-once run (budget, memory in use, who was killed); its alt text."""
    axes.plot([t for t, _ in run["timeline"]], [m / MiB for _, m in run["timeline"]],
              color=COLORS["container"], label=f"{run['k']} containers, peaks at once")
    axes.axhline(run["budget"] / MiB, color=COLORS["container"], linestyle="--",
                 label="the shared budget")
    killed = sum(code == 137 for code in run["exit_codes"])
    axes.set_title(f"Peaks at once: the OOM killer took {killed} of {run['k']} (exit 137)",
                   fontsize=10)
    axes.set_xlabel("seconds")
    axes.legend(fontsize="small")
    return (f"Beside it, {run['k']} containers needing {run['peak_mb']} MiB each at the same "
            f"time under a {run['budget'] / MiB:.0f} MiB budget: exit codes "
            f"{run['exit_codes']}, {killed} killed by the OOM killer.")


def servers_figure(servers: dict) -> DescribedFigure:
    """Per instance: the memory each web server costs (containers, VMs split), and each
    one's request latency, p50 and p99 (containers, then VMs, as on the left)."""
    figure, (memory, latency) = described_subplots((11, 3.8), ncols=2)
    containers, vms = servers["containers"], servers["vms"]
    memory.bar(range(1, len(containers) + 1), [c["memory"] / MiB for c in containers],
               color=COLORS["container"], label="container (USS + kernel memory)")
    first_vm, bottom = len(containers) + 2, [0.0] * len(vms)
    for key, (label, color) in VM_PARTS.items():
        heights = [vm[key] / MiB for vm in vms]
        memory.bar(range(first_vm, first_vm + len(vms)), heights, bottom=bottom, color=color,
                   label=f"VM: {label}")
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    if vms:
        memory.axhline(servers["vm_memory"] / MiB, color="black", linestyle="--",
                       label="a VM's committed memory (-m)")
    memory.set_xlabel("instance (containers, then VMs)")
    memory.set_ylabel("MiB")
    memory.set_title(f"{len(containers)} containers and {len(vms)} VMs serving, one "
                     f"{servers['budget'] / MiB:.0f} MiB budget", fontsize=10)
    memory.legend(fontsize="x-small")
    loaded_vms = [vm for vm in vms if "p50" in vm]    # saved before VMs had network cards: none
    for kind, group, first in (("container", containers, 1), ("VM", loaded_vms, first_vm)):
        numbers = range(first, first + len(group))
        latency.plot(numbers, [s["p50"] * 1000 for s in group], "o", color=COLORS[kind.lower()],
                     label=f"{kind}: p50")
        latency.plot(numbers, [s["p99"] * 1000 for s in group], "^", color=COLORS[kind.lower()],
                     markerfacecolor="none", label=f"{kind}: p99")
    latency.set_yscale("log")                  # TCG's guests answer tens of times slower
    latency.set_xlabel("instance (containers, then VMs)")
    latency.set_ylabel("request latency, ms (log scale)")
    latency.set_title(f"{servers['requests_each']} GETs each over the bridge, "
                      "to containers and VMs alike", fontsize=10)
    latency.legend(fontsize="x-small")
    total_c = sum(c["memory"] for c in containers) / MiB
    total_v = sum(vm["pss"] for vm in vms) / MiB
    p99 = max((c["p99"] for c in containers), default=0) * 1000
    vm_p99 = max((vm["p99"] for vm in loaded_vms), default=0) * 1000
    return finish(figure, f"Two charts. Left, bars of memory per web server: {len(containers)}"
                          f" containers cost {total_c:.0f} MiB in all, {len(vms)} VMs cost "
                          f"{total_v:.0f} MiB, each VM's bar split into guest RAM, TCG cache "
                          f"and QEMU. Right, each server's latency over "
                          f"{servers['requests_each']} requests: containers p50 "
                          f"{percentile_of(containers, 'p50'):.1f} ms typical, worst p99 "
                          f"{p99:.1f} ms; VMs p50 {percentile_of(loaded_vms, 'p50'):.1f} ms "
                          f"typical, worst p99 {vm_p99:.1f} ms.",
                  counts=(memory.xaxis, latency.xaxis))


def percentile_of(servers: list[dict], key: str) -> float:
    """The median over servers of their `key` latency, in milliseconds (0 if none)."""
    return median([s[key] for s in servers]) * 1000 if servers else 0.0


def layer_sharing_figure(disk: dict[str, int]) -> DescribedFigure:
    """Disk taken by an image's layers (stored once) beside each container's own upper
    layer; `disk` maps a bar's label to bytes, the layers first."""
    figure, axes = described_subplots((7, 3))
    labels, kib = list(disk), [disk[label] / 1024 for label in disk]
    colors = ["grey"] + [COLORS["container"]] * (len(labels) - 1)
    bars = axes.barh(labels, kib, color=colors)
    axes.bar_label(bars, [f"{k:,.0f} KiB" for k in kib], padding=3)
    axes.invert_yaxis()                       # the layers on top, as overlayfs draws them
    axes.set_xlim(0, max(kib) * 1.3)
    axes.set_xlabel("disk used, KiB (du)")
    axes.set_title("One image, two containers: the layers once, an upper each")
    return finish(figure, "Bar chart of disk use: " + "; ".join(
        f"{label} {size // 1024} KiB" for label, size in disk.items()), (axes.xaxis,))

def box(axes, x: float, y: float, width: float, height: float, text: str, color: str) -> None:
    """A rounded box with centred text, in the axes' 0..1 coordinates."""
    axes.add_patch(FancyBboxPatch((x, y), width, height, facecolor=color, edgecolor="#333333",
                                  boxstyle="round,pad=0.005,rounding_size=0.015", linewidth=0.8))
    axes.text(x + width / 2, y + height / 2, text, ha="center", va="center", fontsize=8.5)


def arrow(axes, top: float, bottom: float, x: float) -> None:
    """A downward arrow between two boxes of Docker's chain."""
    axes.annotate("", xy=(x, bottom), xytext=(x, top),
                  arrowprops={"arrowstyle": "->", "color": "#333333"})


def stack_figure() -> DescribedFigure:
    """Container vs VM, layer by layer, and Docker's chain from the CLI down to the kernel."""
    figure, (stacks, chain) = described_subplots((11, 5.2), ncols=2,
                                         gridspec_kw={"width_ratios": [1.35, 1]})
    light = {"container": "#d4e6f4", "vm": "#f7dccd", "shared": "#e4e4e4", "app": "#ffffff"}
    kinds = " ".join(sorted(namespaces.DEFAULT))
    controllers = " ".join(c for c in cgroups.NEEDED if c in ("memory", "cpu", "pids"))
    refused = len(security.DENIED_SYSCALLS)
    left, right, width = 0.02, 0.51, 0.47
    for x, side in ((left, "a container"), (right, "a VM")):
        stacks.text(x + width / 2, 0.97, side, ha="center", fontsize=11, weight="bold")
        box(stacks, x, 0.84, width, 0.08, "the application", light["app"])
        box(stacks, x, 0.73, width, 0.08, "its libraries and files (the image)", light["app"])
    box(stacks, left, 0.27, width, 0.43,
        f"namespaces: {kinds}\n(its own view of the machine)\n\n"
        f"cgroups: {controllers}\n(its own budget)\n\n"
        f"security: capabilities, no_new_privs,\nseccomp ({refused} calls refused)\n\n"
        "all of it: settings of the host kernel,\nnot a layer that runs", light["container"])
    box(stacks, right, 0.60, width, 0.10, "the guest's own kernel", light["vm"])
    box(stacks, right, 0.46, width, 0.11,
        "virtual hardware\n(a CPU, RAM, a serial console, virtio)", light["vm"])
    box(stacks, right, 0.27, width, 0.16, "QEMU: one host process\n+ KVM (hardware-assisted)\n"
        "or TCG (emulated, slower)", light["vm"])
    box(stacks, left, 0.08, right + width - left, 0.16,
        "the host's Linux kernel: one kernel for every container\n"
        "(a kernel bug reaches them all); for a VM, only QEMU's and KVM's part of it",
        light["shared"])
    stacks.text(0.5, 0.01, "one kernel shared  vs  a kernel per VM", ha="center", fontsize=9,
                style="italic")
    steps = [("docker (the CLI)", "sends a REST request to the daemon's socket"),
             ("dockerd (the daemon)", "images, networks, volumes, the API"),
             ("containerd", "runs containers for the daemon, over gRPC"),
             ("containerd-shim-runc-v2", "one per container: holds its stdio, reaps it"),
             ("runc (or crun; minicontainer oci)",
              "config.json → namespaces, cgroups, seccomp; then exits\n"
              "the VM side plugs in here: Kata, Firecracker boot a VM"),
             ("the host's Linux kernel", "the container is one of its processes")]
    chain.text(0.5, 0.97, "Docker's chain", ha="center", fontsize=11, weight="bold")
    step_height, gap = 0.115, 0.037
    for i, (name, does) in enumerate(steps):
        y = 0.82 - i * (step_height + gap)
        color = light["shared"] if i == len(steps) - 1 else light["container"]
        box(chain, 0.05, y, 0.9, step_height, f"{name}\n{does}", color)
        if i:
            arrow(chain, y + step_height + gap, y + step_height, 0.5)
    chain.text(0.5, 0.01, "minicontainer's Container() does runc's part", ha="center",
               fontsize=9, style="italic")
    for axes in (stacks, chain):
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.axis("off")
    return finish(figure, "Two diagrams. Left: a container and a VM side by side. Both run "
                  "the application on its libraries. The container's process is held only by "
                  f"settings of the host kernel (namespaces: {kinds}; cgroups: {controllers}; "
                  f"capabilities, no_new_privs and seccomp refusing {refused} calls) and runs "
                  "directly on the host's Linux kernel, shared by every container. The VM's "
                  "application runs on the guest's own kernel, on virtual hardware emulated by "
                  "QEMU, a host process accelerated by KVM or emulating with TCG, on the host "
                  "kernel. Right: Docker's chain, top to bottom: "
                  + ", then ".join(f"{name} ({does})" for name, does in steps) + ".")


def save_pack_figures(directory: Path) -> list[Path]:
    """Save the instructor pack's figure into directory as an SVG, its alt text inside."""
    directory.mkdir(parents=True, exist_ok=True)
    figure = stack_figure()
    # An SVG's accessible name and description are its first <title> and <desc>:
    # matplotlib writes the <title> from metadata, the <desc> we add after it.
    svg = directory / "stack.svg"
    with plt.rc_context({"svg.hashsalt": "minicontainer"}):     # the same file every time
        figure.savefig(svg, format="svg", metadata={"Title": "A container vs a VM, and Docker's "
                                                    "chain", "Date": None})
    description = f"</title>\n <desc>{html.escape(figure.alt_text)}</desc>"
    svg.write_text(svg.read_text().replace("</title>", description, 1))
    plt.close(figure)
    return [svg]


if __name__ == "__main__":
    for path in save_pack_figures(Path(sys.argv[1] if len(sys.argv) > 1 else "docs")):
        print(path)
