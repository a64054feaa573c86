/*
 * Unit tests for core/tags.c: the X-Budget-Tags grammar, its bounds and
 * its refusals.
 */
#include <string.h>

#include "core/tags.h"
#include "tests/unit/check.h"

static bool ok(const char *s)
{
	return tags_valid(s, strlen(s));
}

int main(void)
{
	CHECK(ok("app=support"));
	CHECK(ok("app=support,env=prod,task=refund"));
	CHECK(ok("app=support, env=prod"));
	CHECK(ok("a.b-c_d=Some/Path:1@x+y"));
	CHECK(!ok(""));
	CHECK(!ok("app"));
	CHECK(!ok("app="));
	CHECK(!ok("=x"));
	CHECK(!ok("app=x,"));
	CHECK(!ok("app=x,,env=y"));
	CHECK(!ok("App=x"));                       /* keys are lower case */
	CHECK(!ok("app=x y"));
	CHECK(!ok("app=x\r\nenv=y"));
	CHECK(!ok("app=x;env=y"));
	CHECK(!ok("app=x,app=y"));                 /* a key once */
	CHECK(!ok("app=x, env=y,app=z"));
	CHECK(ok("app=x,apps=y"));
	char key[40], val[80], buf[400];
	memset(key, 'k', 32);
	key[32] = '\0';
	memset(val, 'v', 64);
	val[64] = '\0';
	snprintf(buf, sizeof(buf), "%s=%s", key, val);
	CHECK(ok(buf));
	snprintf(buf, sizeof(buf), "%sk=%s", key, val);
	CHECK(!ok(buf));
	snprintf(buf, sizeof(buf), "%s=%sv", key, val);
	CHECK(!ok(buf));
	/* 16 pairs pass, 17 do not; 256 bytes pass, 257 do not */
	buf[0] = '\0';
	for (int i = 0; i < 16; i++)
		snprintf(buf + strlen(buf), sizeof(buf) - strlen(buf), "%sk%d=v", i ? "," : "", i);
	CHECK(ok(buf));
	strcat(buf, ",k16=v");
	CHECK(!ok(buf));
	memset(buf, 0, sizeof(buf));
	memcpy(buf, "a=", 2);
	memset(buf + 2, 'v', 61);
	for (int i = 1; i < 4; i++) {
		size_t n = strlen(buf);
		snprintf(buf + n, sizeof(buf) - n, ",%c=", 'a' + i);
		memset(buf + strlen(buf), 'v', 61);
	}
	CHECK(strlen(buf) == 255 && ok(buf));
	strcat(buf, "v");
	CHECK(strlen(buf) == 256 && ok(buf));
	strcat(buf, "v");
	CHECK(!ok(buf));
	return check_report("core/tags");
}
