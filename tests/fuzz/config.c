/*
 * libFuzzer harness: the YAML config loader on arbitrary files. It must
 * either load or report errors; never crash or leak.
 */
#include <dlfcn.h>
#include <netdb.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/config.h"

/* The loader resolves provider hosts; fuzzed names must never become DNS
 * queries, so resolution is interposed here and kept numeric-only. */
int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
		struct addrinfo **res)
{
	static int (*real)(const char *, const char *, const struct addrinfo *,
			   struct addrinfo **);
	if (!real)
		real = (int (*)(const char *, const char *, const struct addrinfo *,
				struct addrinfo **))dlsym(RTLD_NEXT, "getaddrinfo");
	struct addrinfo h = hints ? *hints : (struct addrinfo){ 0 };
	h.ai_flags |= AI_NUMERICHOST;
	return real(node, service, &h, res);
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	static int fd = -1;
	if (fd < 0)
		fd = memfd_create("config", 0);
	if (ftruncate(fd, 0) || pwrite(fd, data, size, 0) != (ssize_t)size)
		return 0;
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	FILE *sink = fopen("/dev/null", "w");
	struct config *cfg = config_load(path, sink);
	fclose(sink);
	config_unref(cfg);
	return 0;
}
