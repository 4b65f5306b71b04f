/*
 * probe: the attacker program of the abuse suite (tests/tests/security_*.rs).
 *
 * Built by the tests with the host's `cc -static -O1` and copied into
 * sandboxes (`blink-cli run probe ARGS`, `session run`, REST script runs).
 * Each subcommand attempts one thing and prints one machine-checkable line
 * per attempt:
 *
 *     NAME: denied errno=N       the kernel refused
 *     NAME: ALLOWED ...          the attack worked
 *     NAME: killed signal=N      the attempt killed its process
 *
 * Every attempt that could change anything runs in a child of its own, and
 * undoes what it did if it succeeded. Nothing here writes a host setting
 * other than with the value it has just read; network attempts go to
 * 127.0.0.1 or ::1 only; every loop is bounded in count and time.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/io_uring.h>
#include <linux/keyctl.h>
#include <linux/perf_event.h>
#include <linux/sched.h>
#include <linux/userfaultfd.h>
#include <linux/vm_sockets.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

/* Report a syscall result: negative is a refusal. */
static void report(const char *name, long rc)
{
	if (rc < 0)
		say("%s: denied errno=%d", name, errno);
	else
		say("%s: ALLOWED rc=%ld", name, rc);
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- one attempt per child ------------------------------------------- */

static void try_unshare_user(void)
{
	report("unshare_user", unshare(CLONE_NEWUSER));
}

static void try_unshare_mnt(void)
{
	report("unshare_mnt", unshare(CLONE_NEWNS));
}

static void try_clone_newuser(void)
{
	long pid = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
	if (pid == 0)
		_exit(0);
	if (pid > 0)
		waitpid(pid, NULL, 0);
	report("clone_newuser", pid);
}

static void try_clone3(void)
{
	struct clone_args args;
	memset(&args, 0, sizeof args);
	args.flags = CLONE_NEWUSER;
	args.exit_signal = SIGCHLD;
	long pid = syscall(SYS_clone3, &args, sizeof args);
	if (pid == 0)
		_exit(0);
	if (pid > 0)
		waitpid(pid, NULL, 0);
	report("clone3", pid);
}

static void try_setns_user(void)
{
	int fd = open("/proc/self/ns/user", O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		say("setns_user: denied errno=%d (open)", errno);
		return;
	}
	report("setns_user", syscall(SYS_setns, fd, CLONE_NEWUSER));
}

static void try_mount_tmpfs(void)
{
	const char *dir = "/tmp/.probe-mnt";
	mkdir(dir, 0700);
	long rc = mount("probe", dir, "tmpfs", 0, "size=1m");
	report("mount_tmpfs", rc);
	if (rc == 0)
		umount2(dir, MNT_DETACH);
	rmdir(dir);
}

static void try_keyctl(void)
{
	report("keyctl", syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID,
				 KEY_SPEC_SESSION_KEYRING, 1));
}

static void try_add_key(void)
{
	/* The process keyring: gone with this process even if it worked. */
	long rc = syscall(SYS_add_key, "user", "blink-probe", "x", 1,
			  KEY_SPEC_PROCESS_KEYRING);
	report("add_key", rc);
}

static void try_bpf(void)
{
	union bpf_attr attr;
	memset(&attr, 0, sizeof attr);
	attr.map_type = BPF_MAP_TYPE_ARRAY;
	attr.key_size = 4;
	attr.value_size = 4;
	attr.max_entries = 1;
	report("bpf", syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof attr));
}

static void try_perf_event_open(void)
{
	/* Self-profiling in user space only: what perf_event_paranoid=2
	 * still allows an unprivileged process. */
	struct perf_event_attr attr;
	memset(&attr, 0, sizeof attr);
	attr.size = sizeof attr;
	attr.type = PERF_TYPE_SOFTWARE;
	attr.config = PERF_COUNT_SW_TASK_CLOCK;
	attr.disabled = 1;
	attr.exclude_kernel = 1;
	attr.exclude_hv = 1;
	report("perf_event_open",
	       syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0));
}

static void try_io_uring(void)
{
	struct io_uring_params params;
	memset(&params, 0, sizeof params);
	report("io_uring_setup", syscall(SYS_io_uring_setup, 4, &params));
}

static void try_userfaultfd(void)
{
	/* UFFD_USER_MODE_ONLY: what unprivileged processes may ask for. */
	report("userfaultfd",
	       syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY));
}

static void try_vsock(void)
{
	report("socket_vsock", socket(AF_VSOCK, SOCK_STREAM, 0));
}

static void try_open_by_handle_at(void)
{
	struct {
		unsigned int handle_bytes;
		int handle_type;
		unsigned char f_handle[8];
	} handle;
	/* The "shocker" handle: inode 2, the root of most file systems. */
	memset(&handle, 0, sizeof handle);
	handle.handle_bytes = 8;
	handle.handle_type = 1;
	handle.f_handle[0] = 2;
	int mnt = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	report("open_by_handle_at",
	       syscall(SYS_open_by_handle_at, mnt, &handle, O_RDONLY));
}

static void try_init_module(void)
{
	report("init_module", syscall(SYS_init_module, NULL, 0, ""));
}

static void try_kexec_load(void)
{
	report("kexec_load", syscall(SYS_kexec_load, 0, 0, NULL, 0));
}

static void try_ptrace_pid1(void)
{
	long rc = ptrace(PTRACE_ATTACH, 1, NULL, NULL);
	report("ptrace_pid1", rc);
	if (rc == 0) {
		/* Let the sandbox's init go again at once. */
		waitpid(1, NULL, __WALL);
		ptrace(PTRACE_DETACH, 1, NULL, NULL);
	}
}

static void try_environ_pid1(void)
{
	int fd = open("/proc/1/environ", O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		say("environ_pid1: denied errno=%d", errno);
		return;
	}
	char buf[4096];
	ssize_t n = read(fd, buf, sizeof buf);
	if (n < 0)
		say("environ_pid1: denied errno=%d (read)", errno);
	else
		say("environ_pid1: ALLOWED bytes=%zd", n);
}

/* Open a sysctl for writing and write back exactly what was just read,
 * so even a success changes nothing. */
static void write_back(const char *name, const char *path)
{
	char value[256];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		say("%s: unreadable errno=%d", name, errno);
		return;
	}
	ssize_t n = read(fd, value, sizeof value);
	close(fd);
	if (n <= 0) {
		say("%s: unreadable errno=%d", name, errno);
		return;
	}
	/* O_TRUNC, as a shell's `>` does: the mount is checked first. */
	fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC);
	if (fd < 0) {
		say("%s: denied errno=%d", name, errno);
		return;
	}
	ssize_t w = write(fd, value, n);
	if (w < 0)
		say("%s: denied errno=%d (write)", name, errno);
	else
		say("%s: ALLOWED wrote=%zd", name, w);
	close(fd);
}

static void try_sysctl_printk(void)
{
	write_back("sysctl_printk",
		   "/proc/sys/kernel/printk_ratelimit_burst");
}

static void try_sysctl_net(void)
{
	/* The sandbox's own network namespace, owned by its root. */
	write_back("sysctl_net", "/proc/sys/net/core/somaxconn");
}

/* ---- status ------------------------------------------------------------ */

/* One line: "WHO: Seccomp=N NoNewPrivs=N CapPrm=HEX CapEff=HEX CapBnd=HEX". */
static void status_of(const char *who, const char *path)
{
	char line[512], out[512] = "";
	FILE *f = fopen(path, "r");
	if (!f) {
		say("%s: unreadable errno=%d", who, errno);
		return;
	}
	while (fgets(line, sizeof line, f)) {
		if (!strncmp(line, "Seccomp:", 8) ||
		    !strncmp(line, "NoNewPrivs:", 11) ||
		    !strncmp(line, "CapEff:", 7) ||
		    !strncmp(line, "CapBnd:", 7) ||
		    !strncmp(line, "CapPrm:", 7)) {
			char key[32], val[64];
			size_t used = strlen(out);
			if (sscanf(line, "%31[^:]: %63s", key, val) == 2)
				snprintf(out + used, sizeof out - used, " %s=%s",
					 key, val);
		}
	}
	fclose(f);
	say("%s:%s", who, out);
}

static void map_of(const char *who, const char *path)
{
	char line[256];
	FILE *f = fopen(path, "r");
	if (!f) {
		say("%s: unreadable errno=%d", who, errno);
		return;
	}
	while (fgets(line, sizeof line, f)) {
		unsigned long inside, outside, count;
		if (sscanf(line, "%lu %lu %lu", &inside, &outside, &count) == 3)
			say("%s: %lu %lu %lu", who, inside, outside, count);
	}
	fclose(f);
}

static void status(void)
{
	status_of("self", "/proc/self/status");
	status_of("pid1", "/proc/1/status");
	map_of("uid_map", "/proc/self/uid_map");
	map_of("gid_map", "/proc/self/gid_map");
}

/* ---- inotify ----------------------------------------------------------- */

#define INOTIFY_BOUND 2000

/* Make inotify instances until refused (at most INOTIFY_BOUND); they stay
 * open. Returns how many. */
static int inotify_exhaust(int *err)
{
	struct rlimit rl;
	/* The descriptor limit must not be what stops us. */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	int n = 0;
	*err = 0;
	while (n < INOTIFY_BOUND) {
		if (inotify_init1(IN_CLOEXEC) < 0) {
			*err = errno;
			break;
		}
		n++;
	}
	return n;
}

static int cmd_inotify(int argc, char **argv)
{
	int err;
	int n = inotify_exhaust(&err);
	say("inotify: count=%d errno=%d", n, err);
	/* inotify hold SECS FLAG: keep them while others try. */
	if (argc >= 4 && !strcmp(argv[1], "hold")) {
		int secs = atoi(argv[2]);
		FILE *f = fopen(argv[3], "w");
		if (f) {
			fprintf(f, "%d\n", n);
			fclose(f);
		}
		if (secs > 120)
			secs = 120;
		sleep(secs);
	}
	return 0;
}

static int cmd_inotify_one(void)
{
	int fd = inotify_init1(IN_CLOEXEC);
	if (fd < 0)
		say("inotify_one: denied errno=%d", errno);
	else
		say("inotify_one: ok");
	return 0;
}

/* ---- processes, files, network --------------------------------------- */

static int read_small(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, size - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = 0;
	return (int)n;
}

static int is_pid(const char *name)
{
	if (!*name)
		return 0;
	for (const char *c = name; *c; c++)
		if (*c < '0' || *c > '9')
			return 0;
	return 1;
}

/* Every process this sandbox sees: pid, comm, argv joined by spaces. */
static int cmd_ps(void)
{
	DIR *d = opendir("/proc");
	struct dirent *e;
	if (!d) {
		say("ps: unreadable errno=%d", errno);
		return 1;
	}
	while ((e = readdir(d))) {
		if (!is_pid(e->d_name))
			continue;
		char path[300], comm[64] = "", cmd[512] = "";
		snprintf(path, sizeof path, "/proc/%s/comm", e->d_name);
		read_small(path, comm, sizeof comm);
		comm[strcspn(comm, "\n")] = 0;
		snprintf(path, sizeof path, "/proc/%s/cmdline", e->d_name);
		int n = read_small(path, cmd, sizeof cmd);
		for (int i = 0; i < n; i++)
			if (!cmd[i])
				cmd[i] = ' ';
		say("ps: pid=%s comm=%s cmdline=%s", e->d_name, comm, cmd);
	}
	closedir(d);
	return 0;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Arguments that must not appear in clear in our own command line. */
static char *unhex(const char *hex)
{
	size_t len = strlen(hex) / 2;
	char *out = calloc(len + 1, 1);
	for (size_t i = 0; i < len; i++)
		out[i] = (char)(hexval(hex[2 * i]) * 16 + hexval(hex[2 * i + 1]));
	return out;
}

static int contains(const char *hay, size_t n, const char *needle)
{
	size_t m = strlen(needle);
	if (m == 0 || n < m)
		return 0;
	for (size_t i = 0; i + m <= n; i++)
		if (!memcmp(hay + i, needle, m))
			return 1;
	return 0;
}

/* Does a file hold `needle`? 1 yes, 0 no, -1 unreadable. */
static int file_has(const char *path, const char *needle)
{
	static char buf[1 << 20];
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return -1;
	ssize_t total = 0, n;
	while (total < (ssize_t)sizeof buf &&
	       (n = read(fd, buf + total, sizeof buf - total)) > 0)
		total += n;
	close(fd);
	return contains(buf, (size_t)total, needle);
}

/* reach PATH HEXCONTENT: can this sandbox read a host file with that
 * content, directly or through any process's root or cwd? */
static int cmd_reach(const char *path, const char *hex)
{
	char *content = unhex(hex);
	int found = 0;
	if (file_has(path, content) == 1) {
		say("reach: FOUND direct %s", path);
		found = 1;
	}
	DIR *d = opendir("/proc");
	struct dirent *e;
	while (d && (e = readdir(d))) {
		if (!is_pid(e->d_name) && strcmp(e->d_name, "self") &&
		    strcmp(e->d_name, "thread-self"))
			continue;
		const char *via[] = { "root", "cwd" };
		for (int i = 0; i < 2; i++) {
			char p[4096];
			snprintf(p, sizeof p, "/proc/%s/%s%s", e->d_name,
				 via[i], path);
			if (file_has(p, content) == 1) {
				say("reach: FOUND %s", p);
				found = 1;
			}
		}
	}
	if (d)
		closedir(d);
	if (!found)
		say("reach: none");
	return 0;
}

/* One pass over every process's environ and cmdline for a secret. */
static int scan_env(const char *secret, int quiet)
{
	int hits = 0;
	DIR *d = opendir("/proc");
	struct dirent *e;
	while (d && (e = readdir(d))) {
		if (!is_pid(e->d_name))
			continue;
		const char *files[] = { "environ", "cmdline" };
		for (int i = 0; i < 2; i++) {
			char p[300];
			snprintf(p, sizeof p, "/proc/%s/%s", e->d_name,
				 files[i]);
			if (file_has(p, secret) == 1) {
				char comm[64] = "";
				snprintf(p, sizeof p, "/proc/%s/comm",
					 e->d_name);
				read_small(p, comm, sizeof comm);
				comm[strcspn(comm, "\n")] = 0;
				say("envscan: FOUND pid=%s file=%s comm=%s",
				    e->d_name, files[i], comm);
				hits++;
			}
		}
	}
	if (d)
		closedir(d);
	if (!hits && !quiet)
		say("envscan: clean");
	return hits;
}

/* envwatch HEXSECRET SECS FLAG: scan again and again, so a process that
 * shows the secret only briefly (between entering the sandbox and exec)
 * is caught. FLAG is written after the first pass; the watch ends after
 * SECS seconds (at most 120), at the first hit, or once FLAG.stop exists. */
static int cmd_envwatch(const char *hex, int secs, const char *flag)
{
	char *secret = unhex(hex);
	char stop[4096];
	snprintf(stop, sizeof stop, "%s.stop", flag);
	if (secs > 120)
		secs = 120;
	double end = now() + secs;
	long passes = 0;
	int hits = 0;
	while (now() < end && hits == 0) {
		hits = scan_env(secret, 1);
		if (passes++ == 0) {
			FILE *f = fopen(flag, "w");
			if (f)
				fclose(f);
		}
		if (access(stop, F_OK) == 0)
			break;
	}
	if (!hits)
		say("envwatch: clean passes=%ld", passes);
	return 0;
}

/* Walk a tree (no symlinks followed, at most 8 levels, 60 s) reading the
 * first MiB of every regular file, looking for a secret. */
static long grep_files;
static int grep_hits;
static double grep_end;

static void grep_tree(const char *dir, const char *secret, int depth)
{
	if (depth > 8 || now() > grep_end)
		return;
	DIR *d = opendir(dir);
	struct dirent *e;
	while (d && (e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		char path[4096];
		snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
		if (e->d_type == DT_DIR) {
			grep_tree(path, secret, depth + 1);
		} else if (e->d_type == DT_REG) {
			grep_files++;
			if (file_has(path, secret) == 1) {
				say("procgrep: FOUND %s", path);
				grep_hits++;
			}
		}
	}
	if (d)
		closedir(d);
}

static int cmd_procgrep(const char *hex)
{
	char *secret = unhex(hex);
	grep_end = now() + 60;
	grep_tree("/proc", secret, 0);
	if (!grep_hits)
		say("procgrep: clean files=%ld", grep_files);
	return 0;
}

/* deepdir DIR N: a chain of N nested directories `e` under DIR, made
 * relative to each other, so the whole path may exceed PATH_MAX. */
static int cmd_deepdir(const char *dir, int n)
{
	if (n > 4000)
		n = 4000;
	if (chdir(dir) != 0) {
		say("deepdir: denied errno=%d", errno);
		return 1;
	}
	for (int i = 0; i < n; i++) {
		if ((mkdir("e", 0755) != 0 && errno != EEXIST) || chdir("e") != 0) {
			say("deepdir: stopped depth=%d errno=%d", i, errno);
			return 1;
		}
	}
	say("deepdir: made depth=%d", n);
	return 0;
}

static int cmd_connect(const char *host, int port)
{
	int fd;
	int rc;
	if (!strcmp(host, "127.0.0.1")) {
		struct sockaddr_in a = { .sin_family = AF_INET,
					 .sin_port = htons(port) };
		inet_pton(AF_INET, host, &a.sin_addr);
		fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		rc = fd < 0 ? -1 : connect(fd, (struct sockaddr *)&a, sizeof a);
	} else if (!strcmp(host, "::1")) {
		struct sockaddr_in6 a = { .sin6_family = AF_INET6,
					  .sin6_port = htons(port) };
		inet_pton(AF_INET6, host, &a.sin6_addr);
		fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
		rc = fd < 0 ? -1 : connect(fd, (struct sockaddr *)&a, sizeof a);
	} else {
		say("connect: loopback only");
		return 2;
	}
	if (rc < 0)
		say("connect %s: denied errno=%d", host, errno);
	else
		say("connect %s: ALLOWED", host);
	return 0;
}

/* ---- resources --------------------------------------------------------- */

/* forkbomb HOLD FLAG: every process forks again and again (a binary tree,
 * depth at most 12, so never more than 4096 processes even without any
 * limit); each stays alive HOLD seconds. Reports how many forks worked
 * and the errno of the first refusal. */
static int cmd_forkbomb(int hold, const char *flag)
{
	if (hold > 60)
		hold = 60;
	struct counts {
		int ok, failed, err;
	} *c = mmap(NULL, sizeof *c, PROT_READ | PROT_WRITE,
		    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (c == MAP_FAILED)
		return 1;
	memset(c, 0, sizeof *c);
	pid_t top = getpid();
	setpgid(0, 0);
	for (int depth = 0; depth < 12; depth++) {
		pid_t pid = fork();
		if (pid < 0) {
			if (__sync_fetch_and_add(&c->failed, 1) == 0)
				c->err = errno;
			continue;
		}
		if (pid == 0) {
			__sync_fetch_and_add(&c->ok, 1);
			alarm(hold + 5);
			continue; /* the child forks on too */
		}
	}
	if (getpid() != top) {
		pause(); /* until the alarm (or the group kill) */
		_exit(0);
	}
	/* Give the tree a moment to finish forking. */
	for (int i = 0; i < 50; i++) {
		int before = c->ok + c->failed;
		usleep(100000);
		if (c->ok + c->failed == before)
			break;
	}
	if (c->failed)
		say("forkbomb: held count=%d failed=%d errno=%d", c->ok,
		    c->failed, c->err);
	else
		say("forkbomb: UNBOUNDED count=%d", c->ok);
	FILE *f = fopen(flag, "w");
	if (f)
		fclose(f);
	sleep(hold);
	signal(SIGTERM, SIG_IGN);
	kill(0, SIGTERM);
	while (wait(NULL) > 0)
		;
	return 0;
}

/* memhog MIB FLAG: touch memory 64 MiB at a time up to MIB; at 1 GiB
 * write FLAG and pause 5 s (so others can be timed meanwhile). */
static int cmd_memhog(long mib, const char *flag)
{
	if (mib > 8192)
		mib = 8192;
	long done = 0;
	while (done < mib) {
		size_t chunk = 64UL << 20;
		char *p = mmap(NULL, chunk, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED) {
			say("memhog: refused mib=%ld errno=%d", done, errno);
			return 0;
		}
		for (size_t i = 0; i < chunk; i += 4096)
			p[i] = 1;
		done += 64;
		if (done == 1024) {
			FILE *f = fopen(flag, "w");
			if (f)
				fclose(f);
			sleep(5);
		}
	}
	say("memhog: SURVIVED mib=%ld", done);
	return 0;
}

/* install DEST: copy this program to DEST (mode 0755). */
static int cmd_install(const char *dest)
{
	char buf[65536];
	int in = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
	int out = open(dest, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
	if (in < 0 || out < 0) {
		perror("install");
		return 1;
	}
	ssize_t n;
	while ((n = read(in, buf, sizeof buf)) > 0)
		if (write(out, buf, n) != n) {
			perror("install");
			return 1;
		}
	fchmod(out, 0755);
	close(out);
	say("install: ok");
	return 0;
}

/* ---- main -------------------------------------------------------------- */

struct attempt {
	const char *name;
	void (*run)(void);
};

static const struct attempt ATTEMPTS[] = {
	{ "unshare_user", try_unshare_user },
	{ "unshare_mnt", try_unshare_mnt },
	{ "clone_newuser", try_clone_newuser },
	{ "clone3", try_clone3 },
	{ "setns_user", try_setns_user },
	{ "mount_tmpfs", try_mount_tmpfs },
	{ "keyctl", try_keyctl },
	{ "add_key", try_add_key },
	{ "bpf", try_bpf },
	{ "perf_event_open", try_perf_event_open },
	{ "io_uring_setup", try_io_uring },
	{ "userfaultfd", try_userfaultfd },
	{ "socket_vsock", try_vsock },
	{ "open_by_handle_at", try_open_by_handle_at },
	{ "init_module", try_init_module },
	{ "kexec_load", try_kexec_load },
	{ "ptrace_pid1", try_ptrace_pid1 },
	{ "environ_pid1", try_environ_pid1 },
	{ "sysctl_printk", try_sysctl_printk },
	{ "sysctl_net", try_sysctl_net },
};

/* Run one attempt in a child, so whatever it did dies with it. */
static void attempt(const struct attempt *a)
{
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0) {
		say("%s: fork failed errno=%d", a->name, errno);
		return;
	}
	if (pid == 0) {
		alarm(10);
		a->run();
		fflush(stdout);
		_exit(0);
	}
	int st = 0;
	waitpid(pid, &st, 0);
	if (WIFSIGNALED(st))
		say("%s: killed signal=%d", a->name, WTERMSIG(st));
}

static int cmd_all(void)
{
	for (size_t i = 0; i < sizeof ATTEMPTS / sizeof *ATTEMPTS; i++)
		attempt(&ATTEMPTS[i]);
	int err;
	pid_t pid = fork();
	if (pid == 0) {
		int n = inotify_exhaust(&err);
		say("inotify: count=%d errno=%d", n, err);
		_exit(0);
	}
	waitpid(pid, NULL, 0);
	status();
	return 0;
}

static int usage(void)
{
	fprintf(stderr,
		"usage: probe all | status | ATTEMPT | inotify [hold SECS FLAG] |"
		" inotify-one | ps | reach PATH HEX | envscan HEX |"
		" envwatch HEX SECS FLAG | procgrep HEX | deepdir DIR N | connect 127.0.0.1|::1 PORT |"
		" forkbomb HOLD FLAG | memhog MIB FLAG | install DEST\n");
	return 2;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 2)
		return usage();
	const char *cmd = argv[1];
	if (!strcmp(cmd, "all"))
		return cmd_all();
	if (!strcmp(cmd, "status")) {
		status();
		return 0;
	}
	if (!strcmp(cmd, "inotify"))
		return cmd_inotify(argc - 1, argv + 1);
	if (!strcmp(cmd, "inotify-one"))
		return cmd_inotify_one();
	if (!strcmp(cmd, "ps"))
		return cmd_ps();
	if (!strcmp(cmd, "reach") && argc == 4)
		return cmd_reach(argv[2], argv[3]);
	if (!strcmp(cmd, "envscan") && argc == 3) {
		char *secret = unhex(argv[2]);
		scan_env(secret, 0);
		return 0;
	}
	if (!strcmp(cmd, "envwatch") && argc == 5)
		return cmd_envwatch(argv[2], atoi(argv[3]), argv[4]);
	if (!strcmp(cmd, "connect") && argc == 4)
		return cmd_connect(argv[2], atoi(argv[3]));
	if (!strcmp(cmd, "forkbomb") && argc == 4)
		return cmd_forkbomb(atoi(argv[2]), argv[3]);
	if (!strcmp(cmd, "memhog") && argc == 4)
		return cmd_memhog(atol(argv[2]), argv[3]);
	if (!strcmp(cmd, "procgrep") && argc == 3)
		return cmd_procgrep(argv[2]);
	if (!strcmp(cmd, "deepdir") && argc == 4)
		return cmd_deepdir(argv[2], atoi(argv[3]));
	if (!strcmp(cmd, "install") && argc == 3)
		return cmd_install(argv[2]);
	for (size_t i = 0; i < sizeof ATTEMPTS / sizeof *ATTEMPTS; i++)
		if (!strcmp(cmd, ATTEMPTS[i].name)) {
			attempt(&ATTEMPTS[i]);
			return 0;
		}
	return usage();
}
