/*
 * tags.c — the X-Budget-Tags grammar (tags.h), as a small state machine.
 */
#include "core/tags.h"

#include <string.h>

static bool key_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
	       c == '-';
}

static bool value_char(char c)
{
	return key_char(c) || (c >= 'A' && c <= 'Z') || c == ':' || c == '/' || c == '@' ||
	       c == '+';
}

enum tag_state { IN_KEY, IN_VALUE, AFTER_COMMA };

/* Whether key s[0..len) appears among the keys before `end` in the list. */
static bool seen_before(const char *list, size_t end, const char *key, size_t len)
{
	size_t i = 0;
	while (i < end) {
		while (list[i] == ' ')
			i++;
		const char *eq = memchr(list + i, '=', end - i);
		if (!eq)
			return false;
		if ((size_t)(eq - (list + i)) == len && !memcmp(list + i, key, len))
			return true;
		const char *comma = memchr(eq, ',', end - (size_t)(eq - list));
		if (!comma)
			return false;
		i = (size_t)(comma - list) + 1;
	}
	return false;
}

bool tags_valid(const char *s, size_t len)
{
	if (len == 0 || len > TAGS_MAX_BYTES)
		return false;
	enum tag_state st = IN_KEY;
	size_t run = 0, key_start = 0, pairs = 1;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		switch (st) {
		case AFTER_COMMA:
			if (c == ' ')
				continue;
			st = IN_KEY;
			key_start = i;
			run = 0;
			/* fall through */
		case IN_KEY:
			if (c == '=') {
				if (run == 0 || seen_before(s, key_start, s + key_start, run))
					return false;
				st = IN_VALUE;
				run = 0;
			} else if (!key_char(c) || ++run > 32) {
				return false;
			}
			break;
		case IN_VALUE:
			if (c == ',') {
				if (run == 0 || ++pairs > TAGS_MAX_PAIRS)
					return false;
				st = AFTER_COMMA;
			} else if (!value_char(c) || ++run > 64) {
				return false;
			}
			break;
		}
	}
	return st == IN_VALUE && run > 0;
}
