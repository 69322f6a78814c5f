"""The other side: a virtual machine, booted with QEMU from the containers' own image.

A container is host processes with a different view; a virtual machine is a whole
computer made of software. QEMU gives the guest a CPU (KVM: the real one, in a guest
mode; TCG: emulated), RAM carved out of QEMU's own memory and devices (here a
serial port, and with VM(network="mc-br0") a network card on our bridge), and on
that virtual hardware a separate kernel boots, finds its devices and starts init.
The same busybox image the containers run becomes the guest's first
filesystem, so a comparison measures the virtualization, not the distribution; and
any image from the store boots the same way (VM(image="alpine")).

    from minicontainer.vm import VM
    with VM(memory="128M") as vm:
        code, output = vm.run("uname -r")      # the guest's kernel, not the host's

Read in this order:
  kernel.py     the kernel the guest boots (the distribution's own, never installed)
  initramfs.py  the image as a newc cpio archive, with the guest's /init script
  image.py      an image from the store: its layers merged by overlayfs, packed once
  qemu.py       QEMU's options, and whether KVM or only TCG works here
  machine.py    VM: boot, talk over the serial console, stop; choose_machine
  cleanup.py    after a crash: the QEMUs whose owner died
"""
__all__ = ["VM"]


def __getattr__(name: str):
    # Imported on first use, so reading kernel.py or cleanup.py does not start the rest.
    if name in __all__:
        from . import machine
        return getattr(machine, name)
    raise AttributeError(name)
