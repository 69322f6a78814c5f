"""The course tooling: what the notebooks and exercises use, built on top of the layers.

Nothing here is a layer of the container or the VM. These modules only use them —
to grade a student's exercise, to measure containers against VMs, to draw and show
the results:

    grade.py    runs each exercise check in a child process of its own, with a time-out
    checks.py   the checks: the student's function on the real kernel, in a real container
    measure.py  start time, memory, over-provisioning, kernel, attack surface: plain data
    plots.py    the comparison's figures (matplotlib), from measure.py's data
    panels.py   live notebook panels: controls, and a result that follows them
    security_lab.py  notebook 05: each defence of layer 5 tried, then switched off
    load.py     many containers at once, started and removed

Imports point down only: the layers never import from here. Import the module you
need (`from minicontainer.course import measure`); this package exports nothing itself.
"""
