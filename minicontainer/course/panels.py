"""Live panels for the notebooks: controls, and a result that follows them; and
progress bars for the cells that take longer than a few seconds.

A widget's own output area lives in the page's JavaScript, so an HTML handout made
from the executed notebook shows an empty box where it was. Here the result is an
ordinary output instead, shown when the cell runs and replaced in place (through a
display id) whenever a control changes: live in JupyterLab, complete on paper.
"""
from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from contextlib import redirect_stdout


def panel(controls: Sequence, show: Callable[[], object]) -> None:
    """Display `controls`, then what `show()` prints (or the figure it returns), and
    show it again in the same place whenever a control's value changes."""
    import ipywidgets as widgets
    from IPython.display import display
    display(widgets.HBox(list(controls)))
    handle = display(result_of(show), display_id=True)

    def again(_change) -> None:
        """Show the result anew in its place (a control's value changed)."""
        handle.update(result_of(show))

    for control in controls:
        control.observe(again, "value")


def result_of(show: Callable[[], object]) -> object:
    """What show() printed, as plain text, or the matplotlib figure it returned."""
    from IPython.display import Pretty
    printed = io.StringIO()
    with redirect_stdout(printed):
        figure = show()
    if figure is None:
        return Pretty(printed.getvalue())
    # show() drew with pyplot, so it is imported already; importing it here for text
    # would make the first panel pay for it, and a Ctrl-C in the middle of that import
    # leaves the kernel with half a matplotlib (a course test interrupted exactly there).
    import matplotlib.pyplot as plt
    plt.close(figure)           # shown once, through the display id, not again at cell end
    return figure


def progress(total: int, name: str) -> Callable[[], None]:
    """A progress bar of `total` steps under the cell (tqdm.auto: a widget in Jupyter,
    a line of text elsewhere), for a measurement's `progress_factory`; returns its tick,
    called once per step. The bar closes itself at its last step."""
    from tqdm.auto import tqdm
    bar = tqdm(total=total, desc=name)

    def tick() -> None:
        """One step done (from any thread: tqdm locks its bar)."""
        bar.update()
        if bar.n >= total:
            bar.close()
    return tick
