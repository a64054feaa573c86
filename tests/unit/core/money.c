/* Unit tests for core/money.c: exact parsing and formatting. */
#include <errno.h>
#include <string.h>

#include "core/money.h"
#include "tests/unit/check.h"

static int parse(const char *s, usd_micros *v)
{
	return money_parse(s, strlen(s), v);
}

int main(void)
{
	usd_micros v;
	CHECK(parse("5", &v) == 0 && v == 5000000);
	CHECK(parse("5.00", &v) == 0 && v == 5000000);
	CHECK(parse("0.25", &v) == 0 && v == 250000);
	CHECK(parse("0.000001", &v) == 0 && v == 1);
	CHECK(parse("0.1", &v) == 0 && v == 100000);
	CHECK(parse("+1.5", &v) == 0 && v == 1500000);
	CHECK(parse("1.5000000", &v) == 0 && v == 1500000);   /* trailing zeros are exact */
	CHECK(parse(".5", &v) == 0 && v == 500000);
	CHECK(parse("0.0000001", &v) == -EINVAL);              /* not exact */
	CHECK(parse("-1", &v) == -EINVAL);
	CHECK(parse("", &v) == -EINVAL);
	CHECK(parse(".", &v) == -EINVAL);
	CHECK(parse("1e3", &v) == -EINVAL);
	CHECK(parse("1.2.3", &v) == -EINVAL);
	CHECK(parse("abc", &v) == -EINVAL);
	CHECK(parse("1000000000000", &v) == 0 && v == 1000000000000LL * 1000000);
	CHECK(parse("1000000000001", &v) == -ERANGE);
	CHECK(parse("99999999999999999999999", &v) == -ERANGE);

	char buf[32];
	money_format(1500000, buf, sizeof(buf));
	CHECK(!strcmp(buf, "1.50"));
	money_format(123, buf, sizeof(buf));
	CHECK(!strcmp(buf, "0.000123"));
	money_format(0, buf, sizeof(buf));
	CHECK(!strcmp(buf, "0.00"));
	money_format(-2000000, buf, sizeof(buf));
	CHECK(!strcmp(buf, "-2.00"));
	money_format(INT64_MIN, buf, sizeof(buf));
	CHECK(!strcmp(buf, "-9223372036854.775808"));
	/* round trip */
	for (usd_micros x = 0; x < 3000000; x += 7919) {
		size_t n = money_format(x, buf, sizeof(buf));
		CHECK(money_parse(buf, n, &v) == 0 && v == x);
	}
	return check_report("core/money");
}
