/*
 * A preload library for the abuse suite: if any process loads it, its
 * constructor leaves a marker file in MARKER_DIR (a host temp dir, given
 * with -D at build time) naming the process and its uid. The tests hand
 * its host path to sandboxes as LD_PRELOAD and assert that no marker ever
 * appears: no host-side process loaded what a caller asked for.
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#ifndef MARKER_DIR
#error "build with -DMARKER_DIR=\"/some/dir\""
#endif

__attribute__((constructor)) static void blink_marker(void)
{
	char path[4096], exe[1024] = "", text[2048];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
	if (n > 0)
		exe[n] = 0;
	snprintf(path, sizeof path, "%s/marker.%d", MARKER_DIR, (int)getpid());
	int len = snprintf(text, sizeof text, "uid=%d euid=%d pid=%d exe=%s\n",
			   (int)getuid(), (int)geteuid(), (int)getpid(), exe);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
	if (fd >= 0) {
		if (write(fd, text, (size_t)len) < 0) {
			/* nothing to do: the marker is best effort */
		}
		close(fd);
	}
}
