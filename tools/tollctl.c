/*
 * tollctl — tollgate's admin CLI.
 *
 * This version carries `keygen` (a new virtual key and the SHA-256 hash
 * that goes in the config), --version, and the commands that read a
 * ledger directory directly: `ledger verify`, `ledger export`
 * (tollctl_ledger.c, tollctl_export.c) and `report` (tollctl_report.c);
 * docs/ledger.md documents them; and of the admin-API subcommands of
 * SPEC §1, freeze, unfreeze, freezes and metrics (tollctl_admin.c). The
 * others (budgets, runs, approvals…) are not in it yet: they fail with a
 * clear message and exit 1 rather than pretend.
 */
#include <fcntl.h>
#include <mbedtls/sha256.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/defs.h"
#include "tools/tollctl_admin.h"
#include "tools/tollctl_ledger.h"
#include "tools/tollctl_report.h"

static int keygen(void)
{
	unsigned char raw[24];
	int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
	if (fd < 0 || read(fd, raw, sizeof(raw)) != (ssize_t)sizeof(raw)) {
		perror("tollctl: /dev/urandom");
		return 2;
	}
	close(fd);
	static const char alphabet[] =
		"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
	char key[64] = "tg-";
	size_t n = 3;
	for (size_t i = 0; i < sizeof(raw); i++)
		key[n++] = alphabet[raw[i] % 62];
	key[n] = '\0';
	unsigned char digest[32];
	mbedtls_sha256_ret((const unsigned char *)key, n, digest, 0);
	printf("key: %s\nsecret_sha256: ", key);
	for (size_t i = 0; i < sizeof(digest); i++)
		printf("%02x", digest[i]);
	printf("\n");
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: tollctl keygen\n"
		   "       tollctl --version\n");
	tollctl_ledger_usage(f);
	tollctl_report_usage(f);
	tollctl_admin_usage(f);
}

int main(int argc, char **argv)
{
	if (argc >= 2 && !strcmp(argv[1], "--version")) {
		printf("tollctl %s\n", TOLLGATE_VERSION);
		return 0;
	}
	if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "help"))) {
		usage(stdout);
		return 0;
	}
	if (argc >= 2 && !strcmp(argv[1], "keygen"))
		return keygen();
	if (argc >= 2 && !strcmp(argv[1], "ledger"))
		return tollctl_ledger_main(argc - 2, argv + 2);
	if (argc >= 2 && !strcmp(argv[1], "report"))
		return tollctl_report_main(argc - 1, argv + 1);
	if (argc >= 2 && tollctl_admin_is(argv[1]))
		return tollctl_admin_main(argc - 1, argv + 1);
	if (argc >= 2)
		fprintf(stderr, "tollctl: '%s' is not available in this version (of the admin-API "
			"commands only freeze, unfreeze, freezes and metrics are)\n", argv[1]);
	usage(stderr);
	return 1;
}
