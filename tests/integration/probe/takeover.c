/* Try, from inside a container, each way the kernel gives one process power over another
 * (ptrace_may_access), against one pid: print "<what> ok" or "<what> <ERRNO NAME>" per line.
 * Built static by tests/integration/test_takeover.py, copied into the container, run with
 * `docker exec` / `podman exec`. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *name(int err) {
    switch (err) {
    case EPERM: return "EPERM";
    case EACCES: return "EACCES";
    case ESRCH: return "ESRCH";
    case ENOENT: return "ENOENT";
    case EFAULT: return "EFAULT";
    case EIO: return "EIO";
    case EINVAL: return "EINVAL";
    case ENOSYS: return "ENOSYS";
    default: return "EOTHER";
    }
}

static void report(const char *what, int err) {
    if (err)
        printf("%s %s\n", what, name(err));
    else
        printf("%s ok\n", what);
    fflush(stdout);
}

/* open and read a little: the first failure's errno, 0 when both work */
static int open_read(const char *path, char *buf, size_t len, ssize_t *got) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    ssize_t n = read(fd, buf, len);
    int err = n < 0 ? errno : 0;
    close(fd);
    if (got)
        *got = n;
    return err;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s PID\n", argv[0]);
        return 2;
    }
    pid_t pid = atoi(argv[1]);
    char path[64], buf[4096];
    int err;

    /* PTRACE_ATTACH: on success, wait for the stop and let it go again. */
    if (ptrace(PTRACE_ATTACH, pid, 0, 0) == 0) {
        int status;
        waitpid(pid, &status, __WALL);
        ptrace(PTRACE_DETACH, pid, 0, 0);
        report("ptrace-attach", 0);
    } else {
        report("ptrace-attach", errno);
    }

    /* PTRACE_SEIZE in a child: its exit detaches (the tracee was never stopped). */
    pid_t child = fork();
    if (child == 0) {
        _exit(ptrace(PTRACE_SEIZE, pid, 0, 0) == 0 ? 0 : errno);
    }
    int status;
    waitpid(child, &status, 0);
    report("ptrace-seize", WEXITSTATUS(status));

    /* maps: also where process_vm_readv finds an address to read */
    unsigned long start = 0x10000;
    snprintf(path, sizeof path, "/proc/%d/maps", pid);
    ssize_t got = 0;
    err = open_read(path, buf, sizeof buf - 1, &got);
    report("maps", err);
    if (!err && got > 0) {
        buf[got] = 0;
        start = strtoul(buf, NULL, 16);
    }

    char data[16];
    struct iovec local = {data, sizeof data}, remote = {(void *)start, sizeof data};
    report("process_vm_readv",
           syscall(SYS_process_vm_readv, pid, &local, 1, &remote, 1, 0) < 0 ? errno : 0);

    snprintf(path, sizeof path, "/proc/%d/mem", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        report("mem", errno);
    } else {
        report("mem", pread(fd, data, sizeof data, (off_t)start) < 0 ? errno : 0);
        close(fd);
    }

    snprintf(path, sizeof path, "/proc/%d/environ", pid);
    report("environ", open_read(path, buf, sizeof buf, NULL));

    /* the first descriptor the process has (listing /proc/PID/fd is the owner's right;
     * following or reading a link of it is ptrace_may_access's) */
    snprintf(path, sizeof path, "/proc/%d/fd", pid);
    DIR *dir = opendir(path);
    if (!dir) {
        report("fd", errno);
    } else {
        struct dirent *de;
        int fderr = ENOENT;
        while ((de = readdir(dir)) != NULL) {
            if (de->d_name[0] == '.')
                continue;
            char link[96], target[256];
            snprintf(link, sizeof link, "%s/%s", path, de->d_name);
            fderr = readlink(link, target, sizeof target) < 0 ? errno : 0;
            break;
        }
        closedir(dir);
        report("fd", fderr);
    }

    static const char *links[] = {"cwd", "root", "ns/mnt"};
    for (size_t i = 0; i < sizeof links / sizeof *links; i++) {
        snprintf(path, sizeof path, "/proc/%d/%s", pid, links[i]);
        char target[256];
        report(links[i], readlink(path, target, sizeof target) < 0 ? errno : 0);
    }

    int pidfd = syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0) {
        report("pidfd_getfd", errno);
    } else {
        int got_fd = syscall(SYS_pidfd_getfd, pidfd, 0, 0);
        report("pidfd_getfd", got_fd < 0 ? errno : 0);
        if (got_fd >= 0)
            close(got_fd);
        close(pidfd);
    }
    return 0;
}
