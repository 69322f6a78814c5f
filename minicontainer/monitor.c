/* mc-monitor: what a detached container leaves on the host, and nothing more.
 *
 * A pid namespace's first process (the container's PID 1) needs a parent outside the
 * namespace to collect its exit status (namespaces.isolate forks it from
 * process.fork_and_wait). That parent was a copy of our Python runtime: about 3 MiB
 * of the host's memory per container, 25 times what an idle `sleep` inside costs.
 * This is the one place we write C, for that reason alone: a Python interpreter per
 * container is the cost we cut. crun and Podman's conmon are C for the same reason.
 * monitor.py tells the whole design; setup builds this file with
 *
 *     gcc -static -O2 -o mc-monitor monitor.c
 *
 * Static, so the kernel loads no interpreter (ld.so) by a path: where the exec
 * happens after a chroot (an `exec` into a container), that path would be the
 * container's, and its ld.so would run in a host process.
 *
 * Usage (process.fork_and_wait execs it, by an fd, with these open):
 *
 *     mc-monitor CHILD_PID STATUS_FD      (STATUS_FD -1: write no status)
 *
 * It waits for CHILD_PID, writes its wait status in decimal to STATUS_FD (a regular
 * file in the container's record directory, opened by the runtime: never a directory,
 * whose fd would be a way back into the host's filesystem), and exits the way its
 * child did, so whoever waits for *us* (a foreground `run`) sees the same end.
 * Any other fd it is given is held, never touched, until then: a published port's
 * socket (ports.py), which keeps the host port taken while the container runs.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

/* A decimal argument, or -1 if it is not one (a typo must not wait for pid 0). */
static long number(const char *text) {
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    return (errno || *text == '\0' || *end != '\0') ? -1 : value;
}

int main(int argc, char **argv) {
    /* Not dumpable: no process of the same uid may ptrace us or open our
     * /proc/PID/fd, so the status fd we hold is nobody else's way in. exec made us
     * dumpable again, so this comes first. */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    long child = argc == 3 ? number(argv[1]) : -1, status_fd = argc == 3 ? number(argv[2]) : -2;
    if (child <= 0 || status_fd < -1) {
        fprintf(stderr, "usage: mc-monitor CHILD_PID STATUS_FD\n");
        return 125;
    }
    /* Only the container decides when it ends: a Ctrl-C or a hang-up meant for the
     * terminal we were started from is not for us (docker's shim ignores them too). */
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    int status;
    while (waitpid((pid_t) child, &status, 0) < 0)
        if (errno != EINTR)
            return 125;                      /* not our child: nothing to report */
    if (status_fd >= 0) {
        char text[16];
        int length = snprintf(text, sizeof text, "%d", status);
        if (write((int) status_fd, text, length) != length)
            perror("mc-monitor: writing the exit status");
        close((int) status_fd);
    }
    if (WIFSIGNALED(status)) {               /* end by the same signal */
        int sig = WTERMSIG(status);
        struct rlimit no_core = {0, 0};      /* the container dumped core already */
        setrlimit(RLIMIT_CORE, &no_core);
        signal(sig, SIG_DFL);
        sigset_t only;
        sigemptyset(&only);
        sigaddset(&only, sig);
        sigprocmask(SIG_UNBLOCK, &only, NULL);
        raise(sig);
    }
    return WEXITSTATUS(status);
}
