/*
 * wasi-probe: a WASI preview 1 command in C (clang, wasm32-wasi, Debian's wasi-libc), left a core module.
 *
 * Its runs under toka-host are compared with `wasmtime run` (tests/all/preview1.rs): every subcommand prints what the
 * WASI calls answered (values, errno numbers) so that two runtimes can be compared line by line, including where a
 * call fails. It covers what adapters have been seen to get wrong: arguments and environment values with quotes,
 * spaces and newlines, writes to closed and invalid descriptors, and the directory, clock, random and socket calls.
 *
 *     wasi-probe args A B ...     each argument, escaped, one per line
 *     wasi-probe env              each variable, escaped, sorted
 *     wasi-probe fds DIR          writes and reads on closed, invalid and wrong-direction descriptors
 *     wasi-probe fs DIR           mkdir, create, write, stat, rename, readdir, unlink, rmdir, and escapes from DIR
 *     wasi-probe clock            clock resolutions and readings, a short sleep
 *     wasi-probe random           two 32-byte reads differ
 *     wasi-probe sockets          socket calls on descriptors that are not sockets
 *     wasi-probe closed-stdout    closes stdout, then writes to it: the status says how the write failed
 *     wasi-probe exit N           exits with status N
 */
#define _DEFAULT_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* Prints `s` with quotes, backslashes and control characters escaped, so one value is one line. */
static void escaped(const char *s) {
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': fputs("\\\"", stdout); break;
        case '\\': fputs("\\\\", stdout); break;
        case '\n': fputs("\\n", stdout); break;
        case '\r': fputs("\\r", stdout); break;
        case '\t': fputs("\\t", stdout); break;
        default:
            if (*p < 0x20 || *p == 0x7f) printf("\\x%02x", *p);
            else putchar(*p);
        }
    }
    putchar('"');
}

/* Prints `what: ok` or `what: errno N` for a call's result (negative: failed, with errno set). */
static void said(const char *what, long result) {
    if (result < 0) printf("%s: errno %d\n", what, errno);
    else printf("%s: ok %ld\n", what, result);
}

static int by_string(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int args(int argc, char **argv) {
    printf("argc %d\n", argc - 2);
    for (int i = 2; i < argc; i++) {
        escaped(argv[i]);
        putchar('\n');
    }
    return 0;
}

static int env(void) {
    size_t n = 0;
    while (environ[n]) n++;
    char **sorted = calloc(n + 1, sizeof *sorted);
    if (!sorted) return 1;
    memcpy(sorted, environ, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, by_string);
    printf("env %zu\n", n);
    for (size_t i = 0; i < n; i++) {
        escaped(sorted[i]);
        putchar('\n');
    }
    free(sorted);
    return 0;
}

static int fds(const char *dir) {
    char path[512];
    snprintf(path, sizeof path, "%s/probe-fds.txt", dir);
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
    said("open for writing", fd);
    if (fd < 0) return 1;
    said("write", write(fd, "abc", 3));
    char buffer[8];
    said("read from a write-only descriptor", read(fd, buffer, sizeof buffer));
    said("close", close(fd));
    said("write to the closed descriptor", write(fd, "x", 1));
    said("close it again", close(fd));
    said("write to descriptor 4096", write(4096, "x", 1));
    said("write to descriptor -1", write(-1, "x", 1));
    said("read from descriptor 4096", read(4096, buffer, sizeof buffer));
    said("fsync descriptor 4096", fsync(4096));
    said("lseek descriptor 4096", (long)lseek(4096, 0, SEEK_SET));
    said("write to stdin", write(0, "x", 1));
    said("lseek on stdout", (long)lseek(1, 0, SEEK_CUR));
    int ro = open(path, O_RDONLY);
    said("open for reading", ro);
    said("write to a read-only descriptor", write(ro, "x", 1));
    said("read", read(ro, buffer, sizeof buffer));
    said("close", close(ro));
    said("unlink", unlink(path));
    return 0;
}

static int fs(const char *dir) {
    char a[512], b[512], sub[512], outside[512];
    snprintf(sub, sizeof sub, "%s/probe-dir", dir);
    snprintf(a, sizeof a, "%s/probe-dir/a.txt", dir);
    snprintf(b, sizeof b, "%s/probe-dir/b.txt", dir);
    snprintf(outside, sizeof outside, "%s/../probe-outside.txt", dir);
    said("mkdir", mkdir(sub, 0700));
    said("mkdir again", mkdir(sub, 0700));
    int fd = open(a, O_CREAT | O_EXCL | O_WRONLY, 0600);
    said("create", fd);
    said("write", write(fd, "hello, probe\n", 13));
    said("close", close(fd));
    said("create it again exclusively", open(a, O_CREAT | O_EXCL | O_WRONLY, 0600));
    struct stat st;
    int r = stat(a, &st);
    said("stat", r);
    if (r == 0) printf("size %lld, regular %d, directory %d\n", (long long)st.st_size, S_ISREG(st.st_mode), S_ISDIR(st.st_mode));
    said("stat a missing file", stat(b, &st));
    said("rename", rename(a, b));
    said("symlink to a name outside", symlink("../../probe-escape", a));
    DIR *d = opendir(sub);
    if (!d) {
        said("opendir", -1);
    } else {
        char *names[16];
        size_t n = 0;
        struct dirent *e;
        while ((e = readdir(d)) && n < 16) names[n++] = strdup(e->d_name);
        closedir(d);
        qsort(names, n, sizeof *names, by_string);
        printf("entries:");
        for (size_t i = 0; i < n; i++) {
            printf(" %s", names[i]);
            free(names[i]);
        }
        printf("\n");
    }
    said("open through the symlink", open(a, O_RDONLY));
    said("open outside the directory", open(outside, O_CREAT | O_WRONLY, 0600));
    said("rmdir a directory that is not empty", rmdir(sub));
    said("unlink the symlink", unlink(a));
    said("unlink", unlink(b));
    said("unlink a missing file", unlink(b));
    said("rmdir", rmdir(sub));
    said("open an absolute path outside every preopen", open("/etc/passwd", O_RDONLY));
    return 0;
}

static int clocks(void) {
    struct timespec res, wall, m1, m2;
    said("resolution of the monotonic clock", clock_getres(CLOCK_MONOTONIC, &res));
    printf("monotonic resolution positive %d\n", res.tv_sec > 0 || res.tv_nsec > 0);
    said("realtime", clock_gettime(CLOCK_REALTIME, &wall));
    printf("after 2020 %d\n", wall.tv_sec > 1577836800);
    clock_gettime(CLOCK_MONOTONIC, &m1);
    struct timespec nap = {0, 2 * 1000 * 1000};
    said("sleep 2 ms", nanosleep(&nap, NULL));
    clock_gettime(CLOCK_MONOTONIC, &m2);
    long long ns = (m2.tv_sec - m1.tv_sec) * 1000000000LL + (m2.tv_nsec - m1.tv_nsec);
    printf("slept at least 2 ms %d\n", ns >= 2000000);
    said("process cpu time", clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &m1));
    return 0;
}

static int randomness(void) {
    unsigned char a[32], b[32];
    said("getentropy", getentropy(a, sizeof a));
    said("getentropy", getentropy(b, sizeof b));
    printf("differ %d\n", memcmp(a, b, sizeof a) != 0);
    said("getentropy over 256 bytes", getentropy(a, 257));
    return 0;
}

static int sockets(void) {
    char buffer[4];
    said("accept on stdin", accept(0, NULL, NULL));
    said("recv on stdin", recv(0, buffer, sizeof buffer, 0));
    said("send on stdout", send(1, "x", 1, 0));
    said("shutdown stdout", shutdown(1, SHUT_RDWR));
    said("accept on descriptor 4096", accept(4096, NULL, NULL));
    return 0;
}

static int closed_stdout(void) {
    fflush(stdout);
    if (close(1) != 0) return 2;
    if (write(1, "x", 1) >= 0) return 3;
    return errno == EBADF ? 9 : 4;
}

int main(int argc, char **argv) {
    const char *usage = "usage: wasi-probe args|env|fds|fs|clock|random|sockets|closed-stdout|exit ...";
    if (argc < 2) {
        fprintf(stderr, "%s\n", usage);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "args")) return args(argc, argv);
    if (!strcmp(cmd, "env")) return env();
    if (!strcmp(cmd, "fds") && argc > 2) return fds(argv[2]);
    if (!strcmp(cmd, "fs") && argc > 2) return fs(argv[2]);
    if (!strcmp(cmd, "clock")) return clocks();
    if (!strcmp(cmd, "random")) return randomness();
    if (!strcmp(cmd, "sockets")) return sockets();
    if (!strcmp(cmd, "closed-stdout")) return closed_stdout();
    if (!strcmp(cmd, "exit") && argc > 2) exit(atoi(argv[2]));
    fprintf(stderr, "%s\n", usage);
    return 2;
}
